// Package cluster is the playground's stand-in for raft and PD's region book:
// the stores, the regions with their epochs, peers and leaders, and the one
// lock that orders data commands against topology changes.
//
// Every store holds a peer of every region (full replication), and one
// MVCC engine holds the data, as if raft replicated it perfectly. A store
// serves a region only while it holds the leader peer. Region boundaries are
// kept memcomparable-encoded, exactly as PD stores and returns them; data
// keys on the tikvpb and cdcpb wire are raw and are encoded for comparisons.
//
// Ordering: data commands run under Apply, which holds the read side of the
// cluster lock after checking the request context (store, region, epoch,
// leader, key range), the way raftstore checks a command at apply time.
// Split, merge, leader transfer and store stop/start take the write side,
// so a command either lands before a topology change or is checked against
// the new topology. Watchers are called under the write side, in order.
package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
)

// Sentinel errors of topology operations.
var (
	ErrRegionNotFound = errors.New("region not found")
	ErrStoreNotFound  = errors.New("store not found")
	ErrStoreDown      = errors.New("store is down")
	ErrBadSplitKey    = errors.New("split key is not inside the region or is a boundary")
	ErrNotAdjacent    = errors.New("regions are not adjacent")
	ErrBadPeerMove    = errors.New("bad peer move")
)

// StoreVersion is the TiKV version the playground stores report to PD
// unless SetStoreVersion named another.
const StoreVersion = "8.5.0"

// PlaygroundLabel is a store label every playground store reports to PD, so
// that a client can tell the playground from a real TiKV (restore refuses
// its bench-only leader-only mode on any store without it). Its value says
// why that mode is harmless here: all stores share one engine.
const PlaygroundLabel = "pitr-playground"

// Store is one playground TiKV store.
type Store struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	// StatusAddr is the store's status HTTP API (TiKV's status_address:
	// metrics, GET/POST /config).
	StatusAddr string `json:"status_addr,omitempty"`
	Up         bool   `json:"up"`
	// StartTS is the unix second the store last started (PD's start_timestamp).
	StartTS int64 `json:"start_ts"`
	// Version is the TiKV version the store reports to PD (metapb.Store
	// version, sent in its PutStore/StoreHeartbeat); empty: StoreVersion.
	Version string `json:"version,omitempty"`
}

// Meta returns the PD view of the store.
func (s Store) Meta() *metapb.Store {
	state := metapb.StoreState_Up
	node := metapb.NodeState_Serving
	version := s.Version
	if version == "" {
		version = StoreVersion
	}
	return &metapb.Store{
		Id:             s.ID,
		Address:        s.Addr,
		State:          state,
		NodeState:      node,
		Version:        version,
		PeerAddress:    s.Addr,
		StatusAddress:  s.StatusAddr,
		StartTimestamp: s.StartTS,
		Labels:         []*metapb.StoreLabel{{Key: PlaygroundLabel, Value: "shared-engine"}},
	}
}

// Region is one region. StartKey and EndKey are memcomparable-encoded; an
// empty EndKey means +inf.
type Region struct {
	ID       uint64             `json:"id"`
	StartKey []byte             `json:"start_key"`
	EndKey   []byte             `json:"end_key"`
	Epoch    metapb.RegionEpoch `json:"epoch"`
	Peers    []metapb.Peer      `json:"peers"`
	Leader   uint64             `json:"leader_store"` // store id of the leader peer
}

// Clone returns a deep copy.
func (r *Region) Clone() *Region {
	c := *r
	c.StartKey = append([]byte(nil), r.StartKey...)
	c.EndKey = append([]byte(nil), r.EndKey...)
	c.Peers = append([]metapb.Peer(nil), r.Peers...)
	return &c
}

// Meta returns the region as PD and TiKV errors describe it.
func (r *Region) Meta() *metapb.Region {
	peers := make([]*metapb.Peer, len(r.Peers))
	for i := range r.Peers {
		p := r.Peers[i]
		peers[i] = &p
	}
	ep := r.Epoch
	return &metapb.Region{
		Id:          r.ID,
		StartKey:    append([]byte(nil), r.StartKey...),
		EndKey:      append([]byte(nil), r.EndKey...),
		RegionEpoch: &ep,
		Peers:       peers,
	}
}

// PeerOn returns the region's peer on the store, or nil.
func (r *Region) PeerOn(storeID uint64) *metapb.Peer {
	for i := range r.Peers {
		if r.Peers[i].StoreId == storeID {
			p := r.Peers[i]
			return &p
		}
	}
	return nil
}

// LeaderPeer returns the leader peer, or nil when the region has no leader.
func (r *Region) LeaderPeer() *metapb.Peer {
	if r.Leader == 0 {
		return nil
	}
	return r.PeerOn(r.Leader)
}

// ContainsEncoded reports whether the encoded key lies in [StartKey, EndKey).
func (r *Region) ContainsEncoded(key []byte) bool {
	return bytes.Compare(key, r.StartKey) >= 0 && (len(r.EndKey) == 0 || bytes.Compare(key, r.EndKey) < 0)
}

// ContainsRaw reports whether the raw user key lies in the region.
func (r *Region) ContainsRaw(key []byte) bool { return r.ContainsEncoded(EncodeKey(key)) }

// RawRange returns the region's range as raw user keys; end nil means +inf.
func (r *Region) RawRange() (start, end []byte) {
	return DecodeKey(r.StartKey), DecodeKey(r.EndKey)
}

// EncodeKey returns the memcomparable encoding of a raw key; nil stays empty.
func EncodeKey(raw []byte) []byte {
	if len(raw) == 0 {
		return []byte{}
	}
	return codec.EncodeBytes(nil, raw)
}

// DecodeKey decodes a memcomparable-encoded key; empty stays nil. A key that
// is not a valid encoding (only possible from a misbehaving client) decodes
// to the nearest raw key at or after it, so ranges stay conservative.
func DecodeKey(enc []byte) []byte {
	if len(enc) == 0 {
		return nil
	}
	_, raw, err := codec.DecodeBytes(enc, nil)
	if err != nil {
		return append([]byte(nil), enc...)
	}
	return raw
}

// EventKind says what a topology Event is.
type EventKind int

const (
	EventSplit EventKind = iota + 1
	EventMerge
	EventLeaderChange
	EventStoreDown
	EventStoreUp
	// EventConfChange: a peer was added or removed (conf_ver moved). TiKV
	// CDC ignores it (delegate.rs check_epoch_on_ready skips conf_ver,
	// sink_admin reacts only to splits and merges).
	EventConfChange
)

func (k EventKind) String() string {
	switch k {
	case EventSplit:
		return "split"
	case EventMerge:
		return "merge"
	case EventLeaderChange:
		return "leader-change"
	case EventStoreDown:
		return "store-down"
	case EventStoreUp:
		return "store-up"
	case EventConfChange:
		return "conf-change"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event describes one topology change. Watchers get it under the cluster's
// write lock, after the change, before any later data command.
type Event struct {
	Kind EventKind
	// Old holds the regions as they were before the change: the split region,
	// or both merged regions (source first), or the region whose leader moved
	// (with its previous leader), or every region led by a store going down.
	Old []*Region
	// New holds the regions after the change: split results (left to right),
	// the merged region, the region with its new leader.
	New []*Region
	// StoreID is the store of EventStoreDown / EventStoreUp.
	StoreID uint64
}

// Watcher is called for every topology Event. It must not block and must not
// call back into the Cluster's mutating methods.
type Watcher func(Event)

// Cluster is the playground's region book. It is safe for concurrent use.
type Cluster struct {
	mu       sync.RWMutex
	dir      string
	id       uint64 // cluster id
	nextID   uint64
	stores   map[uint64]*Store
	regions  []*Region // sorted by StartKey
	watchers map[int]Watcher
	nextW    int
	// before holds, per region id, the range the region had before its last
	// split, so a stale request is answered with every region that now covers
	// it (TiKV attaches the split siblings to EpochNotMatch the same way).
	before map[uint64]*Region
	// metaWritten is the region-meta.json last written per store.
	metaWritten map[uint64][]byte
	// Snapshot recovery (recovery.go): recoveryPeers maps a region id to
	// the stores holding a peer of it until the recovered regions are
	// installed; elected maps a recovered region to its elected leader
	// until EndRecovery.
	recovering    bool
	recoveryPeers map[uint64]map[uint64]bool
	elected       map[uint64]uint64
}

type persisted struct {
	ClusterID uint64    `json:"cluster_id"`
	NextID    uint64    `json:"next_id"`
	Stores    []*Store  `json:"stores"`
	Regions   []*Region `json:"regions"`
}

const metaFile = "cluster.json"

// Open loads the cluster from dir, or creates one with nStores stores and one
// region covering the whole key space, with a peer on every store, when dir
// has none. An empty dir keeps the cluster in memory only.
func Open(dir string, clusterID uint64, nStores int) (*Cluster, error) {
	return OpenReplicas(dir, clusterID, nStores, nStores)
}

// OpenReplicas is Open with the first region's peers on the first replicas
// stores only (PD's max-replicas), so peers can be moved onto the others.
func OpenReplicas(dir string, clusterID uint64, nStores, replicas int) (*Cluster, error) {
	c := &Cluster{dir: dir, stores: map[uint64]*Store{}, watchers: map[int]Watcher{}, before: map[uint64]*Region{}}
	if dir != "" {
		b, err := os.ReadFile(filepath.Join(dir, metaFile))
		switch {
		case err == nil:
			var p persisted
			if err := json.Unmarshal(b, &p); err != nil {
				return nil, fmt.Errorf("read %s: %w", metaFile, err)
			}
			c.id, c.nextID, c.regions = p.ClusterID, p.NextID, p.Regions
			for _, s := range p.Stores {
				c.stores[s.ID] = s
			}
			sortRegions(c.regions)
			// A dir from before raft volumes gets them now.
			if err := c.saveRegionMetasLocked(); err != nil {
				return nil, err
			}
			return c, nil
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("read %s: %w", metaFile, err)
		}
	}
	if nStores < 1 {
		return nil, fmt.Errorf("need at least one store, got %d", nStores)
	}
	if replicas < 1 || replicas > nStores {
		return nil, fmt.Errorf("need 1 to %d replicas, got %d", nStores, replicas)
	}
	c.id = clusterID
	c.nextID = 1
	// Stores take ids 1..n, as a fresh TiKV cluster's usually do.
	var ids []uint64
	for i := 0; i < nStores; i++ {
		s := &Store{ID: c.allocLocked(), Up: true}
		c.stores[s.ID] = s
		ids = append(ids, s.ID)
	}
	r := &Region{ID: c.allocLocked(), StartKey: []byte{}, EndKey: []byte{}, Epoch: metapb.RegionEpoch{ConfVer: 1, Version: 1}}
	for _, id := range ids[:replicas] {
		r.Peers = append(r.Peers, metapb.Peer{Id: c.allocLocked(), StoreId: id})
	}
	r.Leader = r.Peers[0].StoreId
	c.regions = []*Region{r}
	if err := c.saveLocked(); err != nil {
		return nil, err
	}
	return c, nil
}

// ID returns the cluster id.
func (c *Cluster) ID() uint64 { return c.id }

func (c *Cluster) allocLocked() uint64 {
	id := c.nextID
	c.nextID++
	return id
}

// AllocID returns a fresh cluster-unique id (PD's AllocID).
func (c *Cluster) AllocID() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.allocLocked()
	return id, c.saveLocked()
}

func (c *Cluster) saveLocked() error {
	if c.dir == "" {
		return nil
	}
	p := persisted{ClusterID: c.id, NextID: c.nextID, Regions: c.regions}
	for _, s := range c.storesLocked() {
		p.Stores = append(p.Stores, s)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(c.dir, metaFile), b); err != nil {
		return err
	}
	return c.saveRegionMetasLocked()
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (c *Cluster) storesLocked() []*Store {
	out := make([]*Store, 0, len(c.stores))
	for _, s := range c.stores {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Stores returns a copy of every store, by id.
func (c *Cluster) Stores() []Store {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []Store
	for _, s := range c.storesLocked() {
		out = append(out, *s)
	}
	return out
}

// Store returns one store.
func (c *Cluster) Store(id uint64) (Store, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s, ok := c.stores[id]
	if !ok {
		return Store{}, fmt.Errorf("store %d: %w", id, ErrStoreNotFound)
	}
	return *s, nil
}

// SetStoreAddr records the address a store listens on (set when it starts).
func (c *Cluster) SetStoreAddr(id uint64, addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.stores[id]
	if !ok {
		return fmt.Errorf("store %d: %w", id, ErrStoreNotFound)
	}
	s.Addr = addr
	return c.saveLocked()
}

// SetStoreVersion records the TiKV version a store reports to PD (a TiKV
// sends it in PutStore and every StoreHeartbeat; PD keeps the newest).
func (c *Cluster) SetStoreVersion(id uint64, version string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.stores[id]
	if !ok {
		return fmt.Errorf("store %d: %w", id, ErrStoreNotFound)
	}
	s.Version = version
	return c.saveLocked()
}

// SetStoreStatusAddr records the address a store's status server listens
// on (set when it starts; PD reports it as the store's status_address).
func (c *Cluster) SetStoreStatusAddr(id uint64, addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.stores[id]
	if !ok {
		return fmt.Errorf("store %d: %w", id, ErrStoreNotFound)
	}
	s.StatusAddr = addr
	return c.saveLocked()
}

// Regions returns copies of all regions, sorted by start key.
func (c *Cluster) Regions() []*Region {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*Region, len(c.regions))
	for i, r := range c.regions {
		out[i] = r.Clone()
	}
	return out
}

// RegionByID returns a copy of the region, or ErrRegionNotFound.
func (c *Cluster) RegionByID(id uint64) (*Region, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if r := c.byIDLocked(id); r != nil {
		return r.Clone(), nil
	}
	return nil, fmt.Errorf("region %d: %w", id, ErrRegionNotFound)
}

func (c *Cluster) byIDLocked(id uint64) *Region {
	for _, r := range c.regions {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// LocateEncoded returns a copy of the region holding the encoded key.
func (c *Cluster) LocateEncoded(key []byte) *Region {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if i := c.indexLocked(key); i >= 0 {
		return c.regions[i].Clone()
	}
	return nil
}

// LocateRaw returns a copy of the region holding the raw key.
func (c *Cluster) LocateRaw(key []byte) *Region { return c.LocateEncoded(EncodeKey(key)) }

func (c *Cluster) indexLocked(enc []byte) int {
	i := sort.Search(len(c.regions), func(i int) bool {
		return len(c.regions[i].EndKey) == 0 || bytes.Compare(enc, c.regions[i].EndKey) < 0
	})
	if i < len(c.regions) && c.regions[i].ContainsEncoded(enc) {
		return i
	}
	return -1
}

// PrevRegion returns a copy of the region before the one holding the encoded
// key, or nil.
func (c *Cluster) PrevRegion(key []byte) *Region {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if i := c.indexLocked(key); i > 0 {
		return c.regions[i-1].Clone()
	}
	return nil
}

// ScanRegions returns copies of up to limit regions (0 = no limit)
// overlapping the encoded range [start, end); empty end means +inf.
func (c *Cluster) ScanRegions(start, end []byte, limit int) []*Region {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*Region
	i := c.indexLocked(start)
	if i < 0 {
		i = 0
	}
	for ; i < len(c.regions); i++ {
		r := c.regions[i]
		if len(end) > 0 && bytes.Compare(r.StartKey, end) >= 0 {
			break
		}
		out = append(out, r.Clone())
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out
}

// Watch registers a watcher for topology events and returns its cancel func.
func (c *Cluster) Watch(w Watcher) (cancel func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextW
	c.nextW++
	c.watchers[id] = w
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.watchers, id)
	}
}

func (c *Cluster) emitLocked(ev Event) {
	ids := make([]int, 0, len(c.watchers))
	for id := range c.watchers {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		c.watchers[id](ev)
	}
}

// Split splits the region holding the raw key at it. As TiKV does with its
// default right-derive-when-split = true, the original region id keeps the
// right half and the left half gets a new region id and new peer ids; both
// halves get epoch version+1. It returns the new regions, left to right.
func (c *Cluster) Split(rawKey []byte) ([]*Region, error) {
	if len(rawKey) == 0 {
		return nil, ErrBadSplitKey
	}
	enc := EncodeKey(rawKey)
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.indexLocked(enc)
	if i < 0 {
		return nil, ErrRegionNotFound
	}
	old := c.regions[i]
	if bytes.Equal(old.StartKey, enc) {
		return nil, ErrBadSplitKey
	}
	before := old.Clone()
	c.before[old.ID] = before
	left := old.Clone()
	left.ID = c.allocLocked()
	for j := range left.Peers {
		left.Peers[j].Id = c.allocLocked()
	}
	left.EndKey = enc
	left.Epoch.Version++
	right := old
	right.StartKey = enc
	right.Epoch.Version++
	c.regions = append(c.regions[:i], append([]*Region{left}, c.regions[i:]...)...)
	if err := c.saveLocked(); err != nil {
		return nil, err
	}
	ev := Event{Kind: EventSplit, Old: []*Region{before}, New: []*Region{left.Clone(), right.Clone()}}
	c.emitLocked(ev)
	return ev.New, nil
}

// Merge merges the source region into the adjacent target region, as PD's
// merge operator does: the target survives with the union range and
// version = max(versions)+1; the source is destroyed.
func (c *Cluster) Merge(source, target uint64) (*Region, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	src, dst := c.byIDLocked(source), c.byIDLocked(target)
	if src == nil || dst == nil || source == target {
		return nil, fmt.Errorf("merge %d into %d: %w", source, target, ErrRegionNotFound)
	}
	var merged Region = *dst
	switch {
	case bytes.Equal(src.EndKey, dst.StartKey) && len(src.EndKey) > 0:
		merged.StartKey = src.StartKey
	case bytes.Equal(dst.EndKey, src.StartKey) && len(dst.EndKey) > 0:
		merged.EndKey = src.EndKey
	default:
		return nil, fmt.Errorf("merge %d into %d: %w", source, target, ErrNotAdjacent)
	}
	oldSrc, oldDst := src.Clone(), dst.Clone()
	v := src.Epoch.Version
	if dst.Epoch.Version > v {
		v = dst.Epoch.Version
	}
	dst.StartKey, dst.EndKey = merged.StartKey, merged.EndKey
	dst.Epoch.Version = v + 1
	out := c.regions[:0]
	for _, r := range c.regions {
		if r.ID != source {
			out = append(out, r)
		}
	}
	c.regions = out
	sortRegions(c.regions)
	if err := c.saveLocked(); err != nil {
		return nil, err
	}
	c.emitLocked(Event{Kind: EventMerge, Old: []*Region{oldSrc, oldDst}, New: []*Region{dst.Clone()}})
	return dst.Clone(), nil
}

// TransferLeader moves the region's leader to the store.
func (c *Cluster) TransferLeader(regionID, storeID uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.byIDLocked(regionID)
	if r == nil {
		return fmt.Errorf("region %d: %w", regionID, ErrRegionNotFound)
	}
	s, ok := c.stores[storeID]
	if !ok || r.PeerOn(storeID) == nil {
		return fmt.Errorf("store %d: %w", storeID, ErrStoreNotFound)
	}
	if !s.Up {
		return fmt.Errorf("store %d: %w", storeID, ErrStoreDown)
	}
	if r.Leader == storeID {
		return nil
	}
	old := r.Clone()
	r.Leader = storeID
	if err := c.saveLocked(); err != nil {
		return err
	}
	c.emitLocked(Event{Kind: EventLeaderChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
	return nil
}

// MovePeer moves the region's peer from one store to another, as PD's
// balance-region operator does: add a peer on to, then remove the one on
// from, each a raft conf change that bumps conf_ver by one
// (raftstore apply.rs exec_change_peer: conf_ver += 1 per change). When the
// leader is on from, it is transferred first to another up peer (the new
// peer when there is no other), as PD's operator does before removing a
// leader peer. Watchers see the leader change (if any) and one
// EventConfChange per conf change.
func (c *Cluster) MovePeer(regionID, from, to uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.byIDLocked(regionID)
	if r == nil {
		return fmt.Errorf("region %d: %w", regionID, ErrRegionNotFound)
	}
	for _, id := range []uint64{from, to} {
		if _, ok := c.stores[id]; !ok {
			return fmt.Errorf("store %d: %w", id, ErrStoreNotFound)
		}
	}
	switch {
	case from == to:
		return fmt.Errorf("move region %d from store %d to itself: %w", regionID, from, ErrBadPeerMove)
	case r.PeerOn(from) == nil:
		return fmt.Errorf("region %d has no peer on store %d: %w", regionID, from, ErrBadPeerMove)
	case r.PeerOn(to) != nil:
		return fmt.Errorf("region %d already has a peer on store %d: %w", regionID, to, ErrBadPeerMove)
	case !c.stores[to].Up:
		return fmt.Errorf("store %d: %w", to, ErrStoreDown)
	}
	var events []Event
	transfer := func() bool {
		for _, p := range r.Peers {
			if p.StoreId != from && c.stores[p.StoreId] != nil && c.stores[p.StoreId].Up {
				old := r.Clone()
				r.Leader = p.StoreId
				events = append(events, Event{Kind: EventLeaderChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
				return true
			}
		}
		return false
	}
	moved := r.Leader != from || transfer()
	old := r.Clone()
	r.Peers = append(r.Peers, metapb.Peer{Id: c.allocLocked(), StoreId: to})
	r.Epoch.ConfVer++
	events = append(events, Event{Kind: EventConfChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
	if !moved {
		transfer()
	}
	old = r.Clone()
	peers := r.Peers[:0]
	for _, p := range r.Peers {
		if p.StoreId != from {
			peers = append(peers, p)
		}
	}
	r.Peers = peers
	r.Epoch.ConfVer++
	if r.Leader == from {
		r.Leader = 0 // only possible when no other peer is up
	}
	events = append(events, Event{Kind: EventConfChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
	if err := c.saveLocked(); err != nil {
		return err
	}
	for _, ev := range events {
		c.emitLocked(ev)
	}
	return nil
}

// SetStoreUp marks a store up or down. Taking a store down moves each of its
// leaders to the next store that is up (as an election would), emitting one
// EventLeaderChange per region after the EventStoreDown; with no store up the
// regions are left leaderless.
func (c *Cluster) SetStoreUp(storeID uint64, up bool, startUnix int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.stores[storeID]
	if !ok {
		return fmt.Errorf("store %d: %w", storeID, ErrStoreNotFound)
	}
	if s.Up == up {
		return nil
	}
	s.Up = up
	if up {
		s.StartTS = startUnix
		// Leaderless regions elect this store (not while recovering: the
		// recovery elects the leaders).
		var changed []Event
		for _, r := range c.regions {
			if r.Leader == 0 && r.PeerOn(storeID) != nil && !c.recovering {
				old := r.Clone()
				r.Leader = storeID
				changed = append(changed, Event{Kind: EventLeaderChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
			}
		}
		if err := c.saveLocked(); err != nil {
			return err
		}
		c.emitLocked(Event{Kind: EventStoreUp, StoreID: storeID})
		for _, ev := range changed {
			c.emitLocked(ev)
		}
		return nil
	}
	var led []*Region
	var changed []Event
	for _, r := range c.regions {
		if r.Leader != storeID {
			continue
		}
		old := r.Clone()
		led = append(led, old)
		r.Leader = 0
		for _, p := range r.Peers {
			if o := c.stores[p.StoreId]; o != nil && o.Up {
				r.Leader = p.StoreId
				break
			}
		}
		changed = append(changed, Event{Kind: EventLeaderChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
	}
	if err := c.saveLocked(); err != nil {
		return err
	}
	c.emitLocked(Event{Kind: EventStoreDown, StoreID: storeID, Old: led})
	for _, ev := range changed {
		c.emitLocked(ev)
	}
	return nil
}

// Check validates a request context against the current topology the way
// raftstore does before proposing: the store must be up, the region must
// exist and be led by this store with the same epoch version, and every raw
// key must lie in the region. It returns nil when the request may proceed.
func (c *Cluster) Check(storeID uint64, ctx *kvrpcpb.Context, rawKeys ...[]byte) *errorpb.Error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.checkLocked(storeID, ctx, rawKeys)
}

func (c *Cluster) checkLocked(storeID uint64, ctx *kvrpcpb.Context, rawKeys [][]byte) *errorpb.Error {
	if ctx == nil {
		ctx = &kvrpcpb.Context{}
	}
	if p := ctx.GetPeer(); p != nil && p.StoreId != 0 && p.StoreId != storeID {
		return &errorpb.Error{
			Message:       fmt.Sprintf("store not match: request for store %d sent to store %d", p.StoreId, storeID),
			StoreNotMatch: &errorpb.StoreNotMatch{RequestStoreId: p.StoreId, ActualStoreId: storeID},
		}
	}
	r := c.byIDLocked(ctx.GetRegionId())
	if r == nil {
		if rerr := c.recoveryErrorLocked(storeID, ctx.GetRegionId()); rerr != nil {
			return rerr
		}
	}
	if r == nil || r.PeerOn(storeID) == nil {
		// A store without a peer of the region does not know it
		// (raftstore: RegionNotFound).
		return &errorpb.Error{
			Message:        fmt.Sprintf("region %d is missing", ctx.GetRegionId()),
			RegionNotFound: &errorpb.RegionNotFound{RegionId: ctx.GetRegionId()},
		}
	}
	if r.Leader != storeID {
		ne := &errorpb.NotLeader{RegionId: r.ID}
		if lp := r.LeaderPeer(); lp != nil {
			ne.Leader = lp
		}
		return &errorpb.Error{Message: fmt.Sprintf("peer is not leader for region %d", r.ID), NotLeader: ne}
	}
	if ep := ctx.GetRegionEpoch(); ep == nil || ep.Version != r.Epoch.Version || ep.ConfVer != r.Epoch.ConfVer {
		return c.epochNotMatchLocked(r, ep)
	}
	for _, k := range rawKeys {
		if !r.ContainsRaw(k) {
			return &errorpb.Error{
				Message: fmt.Sprintf("key %q is not in region %d", k, r.ID),
				KeyNotInRegion: &errorpb.KeyNotInRegion{
					Key: k, RegionId: r.ID, StartKey: r.StartKey, EndKey: r.EndKey,
				},
			}
		}
	}
	return nil
}

// epochNotMatchLocked builds the EpochNotMatch error carrying the regions
// that now cover the stale region's range, as TiKV does after a split.
func (c *Cluster) epochNotMatchLocked(r *Region, ep *metapb.RegionEpoch) *errorpb.Error {
	start, end := r.StartKey, r.EndKey
	if b := c.before[r.ID]; b != nil {
		if bytes.Compare(b.StartKey, start) < 0 {
			start = b.StartKey
		}
		if len(end) > 0 && (len(b.EndKey) == 0 || bytes.Compare(b.EndKey, end) > 0) {
			end = b.EndKey
		}
	}
	var cur []*metapb.Region
	for _, o := range c.regions {
		if overlaps(o, start, end) {
			cur = append(cur, o.Meta())
		}
	}
	return &errorpb.Error{
		Message:       fmt.Sprintf("epoch not match for region %d: request %v, current %v", r.ID, ep, r.Epoch),
		EpochNotMatch: &errorpb.EpochNotMatch{CurrentRegions: cur},
	}
}

func overlaps(r *Region, start, end []byte) bool {
	if len(end) > 0 && bytes.Compare(r.StartKey, end) >= 0 {
		return false
	}
	if len(r.EndKey) > 0 && bytes.Compare(r.EndKey, start) <= 0 {
		return false
	}
	return true
}

// Apply runs fn as one data command of the region named by ctx, after Check,
// while holding the cluster's read lock so no topology change interleaves.
// It returns the region error, if any, without running fn. fn receives a copy
// of the region it runs in.
func (c *Cluster) Apply(storeID uint64, ctx *kvrpcpb.Context, rawKeys [][]byte, fn func(r *Region) error) (*errorpb.Error, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if rerr := c.checkLocked(storeID, ctx, rawKeys); rerr != nil {
		return rerr, nil
	}
	return nil, fn(c.byIDLocked(ctx.GetRegionId()).Clone())
}

// View runs fn under the cluster's read lock, so that the topology cannot
// change while fn runs (used to take a data snapshot that is consistent with
// a region's epoch, as a raft snapshot is). fn must not call other Cluster
// methods: a waiting writer would deadlock it.
func (c *Cluster) View(fn func()) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	fn()
}

func sortRegions(rs []*Region) {
	sort.Slice(rs, func(i, j int) bool { return bytes.Compare(rs[i].StartKey, rs[j].StartKey) < 0 })
}
