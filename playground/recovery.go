package playground

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	recoverdatapb "github.com/pingcap/kvproto/pkg/recoverdatapb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// Snapshot recovery: stores started on restored volumes (BR's EBS restore,
// br/pkg/restore/data/data.go and br/pkg/task/restore_data.go drive it).
//
// With Config.DeferStores, PD starts and the stores do not, as TiDB
// Operator holds TiKV back during a volume restore. StartStoresFromVolumes
// then starts each store of BR's restore volume file: like TiKV
// (components/server/src/server.rs), the store asks PD IsSnapshotRecovering
// at start; marked, it runs in recovery mode, adopts PD's cluster id
// (components/snap_recovery/src/init_cluster.rs start_recovery) and serves
// recover_data.RecoverData; not marked, the playground refuses to start it
// (ErrNotRecovering: restarting a cluster from volumes without recovery is
// not emulated). A store opens its own engine from its KV volume (the
// restored copy) and reads its raft volume's region-meta.json.
//
// The protocol, per store, as TiKV answers it
// (components/snap_recovery/src/services.rs):
//   - ReadRegionMeta streams one RegionMeta per region of region-meta.json;
//   - RecoverRegion records as_leader/tombstone per region and answers
//     {store_id} when the stream closes;
//   - WaitApply waits until every started store's RecoverRegion stream has
//     closed, then (once, for all) builds the cluster: a fresh shared
//     engine holding, for every region a store was told to lead, the
//     region's whole range copied from that store's engine, and a region
//     book of those regions (peers: the peers no store was told to
//     tombstone; leader: the elected store, held back until recovery
//     ends). A region left without a leader, elected twice, or overlapping
//     another elected region fails WaitApply with an error naming it (a
//     region nobody leads that an elected region overlaps is stale: BR
//     tombstones it, and the playground drops it);
//   - ResolveKvData deletes, in the regions with a peer on the store, every
//     version committed after resolved_ts and every lock
//     (data_resolver.rs), streaming its counts, the last response always.
//
// While recovering, KV, CDC and import requests are refused as a TiKV
// whose regions have no leader refuses them (NotLeader without a leader,
// or RegionNotFound; cluster/recovery.go). When PD's marker is deleted the
// stores leave recovery mode in place and serve the elected regions and
// leaders: a real TiKV is restarted by the operator instead; the playground
// polls the marker and switches, which a client cannot tell apart once the
// stores answer again. After that, RecoverData answers Unimplemented, as
// TiKV registers the service only in recovery mode.

// ErrNotRecovering: StartStoresFromVolumes found PD not marked
// snapshot-recovering.
var ErrNotRecovering = errors.New("PD is not marked snapshot-recovering: the playground starts stores from volumes only in snapshot recovery " +
	"(POST /pd/api/v1/admin/cluster/markers/snapshot-recovering first)")

// lastLogTerm is the raft term every restored peer reports. The playground
// has no raft log: every peer's log is the shared engine's batches, all of
// one term, so the term never decides an election and last_index (the
// engine copy's AppliedIndex) does, as it does in TiKV among peers of the
// same term.
const lastLogTerm = 1

// markerPollInterval is how often recovering stores ask PD whether the
// marker is still set.
const markerPollInterval = 100 * time.Millisecond

// recovery is the playground-wide state of one snapshot recovery.
type recovery struct {
	mu      sync.Mutex
	stores  map[uint64]*recoveringStore
	pending int           // RecoverRegion streams not closed yet
	allIn   chan struct{} // closed when pending reaches 0
	built   bool
	err     error // of the build
	ended   bool
}

type recoveringStore struct {
	id      uint64
	eng     *mvcc.Engine // the store's engine copy; nil after the build
	applied uint64
	meta    *cluster.RegionMetaFile
	// Set by RecoverRegion.
	reported  bool
	leaders   map[uint64]bool
	tombstone map[uint64]bool
}

// StartStoresFromVolumes starts every store of a BR restore volume file
// (VolumesFile with restore_volume_id set) in snapshot-recovery mode. The
// playground must have been started with DeferStores.
func (p *Playground) StartStoresFromVolumes(ctx context.Context, volumesFile string) (err error) {
	vf, err := ReadVolumesFile(volumesFile)
	if err != nil {
		return err
	}
	if len(vf.TiKV.Stores) == 0 {
		return fmt.Errorf("volumes file %s: no stores", volumesFile)
	}
	p.mu.Lock()
	busy := len(p.stores) > 0 || p.recovery != nil
	p.mu.Unlock()
	if busy {
		return fmt.Errorf("start stores from volumes: stores already started (start the playground with DeferStores)")
	}
	if st := p.Engine.Stats(); st != (mvcc.Stats{}) {
		return fmt.Errorf("start stores from volumes: the playground's engine in %s is not empty", p.cfg.Dir)
	}
	marked, err := p.pd().SnapshotRecovering(ctx)
	if err != nil {
		return fmt.Errorf("start stores from volumes: ask pd: %w", err)
	}
	if !marked {
		return fmt.Errorf("start stores from volumes: %w", ErrNotRecovering)
	}
	rec := &recovery{stores: map[uint64]*recoveringStore{}, allIn: make(chan struct{})}
	defer func() {
		if err != nil {
			rec.closeEngines()
		}
	}()
	var ids []uint64
	peers := map[uint64][]uint64{}
	for _, s := range vf.TiKV.Stores {
		kv, raft := s.volume(VolumeTypeKV), s.volume(VolumeTypeRaft)
		if kv == nil || raft == nil || kv.RestoreID == "" || raft.RestoreID == "" {
			return fmt.Errorf("store %d: the volumes file needs a %s and a %s volume with restore_volume_id", s.StoreID, VolumeTypeKV, VolumeTypeRaft)
		}
		if rec.stores[s.StoreID] != nil {
			return fmt.Errorf("store %d is in the volumes file twice", s.StoreID)
		}
		meta, err := cluster.ReadRegionMeta(raft.RestoreID)
		if err != nil {
			return fmt.Errorf("store %d: %w", s.StoreID, err)
		}
		if meta.StoreID != s.StoreID {
			return fmt.Errorf("store %d: raft volume %s belongs to store %d", s.StoreID, raft.RestoreID, meta.StoreID)
		}
		eng, err := mvcc.Open(kv.RestoreID, p.cfg.Logger.Named(fmt.Sprintf("mvcc-restored-%d", s.StoreID)))
		if err != nil {
			return fmt.Errorf("store %d: open kv volume %s: %w", s.StoreID, kv.RestoreID, err)
		}
		rec.stores[s.StoreID] = &recoveringStore{id: s.StoreID, eng: eng, applied: eng.AppliedIndex(), meta: meta}
		ids = append(ids, s.StoreID)
		for _, r := range meta.Regions {
			peers[r.RegionID] = append(peers[r.RegionID], s.StoreID)
		}
		p.log.Info("store volume opened", "store", s.StoreID, "kv", kv.RestoreID, "raft", raft.RestoreID,
			"regions", len(meta.Regions), "applied_index", eng.AppliedIndex(), "volume_cluster_id", meta.ClusterID, "cluster_id", p.Cluster.ID())
	}
	rec.pending = len(ids)
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	if err := p.Cluster.BeginRecovery(ids, peers); err != nil {
		return fmt.Errorf("start stores from volumes: %w", err)
	}
	p.mu.Lock()
	p.recovery = rec
	p.mu.Unlock()
	for _, id := range ids {
		if err := p.startStore(id, "", ""); err != nil {
			return err
		}
	}
	if err := p.writeVolumesFileIfDir(); err != nil {
		return err
	}
	p.wg.Add(1)
	go p.markerLoop(p.runCtx)
	p.log.Info("stores started in snapshot recovery mode", "stores", ids)
	return nil
}

func (p *Playground) writeVolumesFileIfDir() error {
	if p.cfg.Dir == "" {
		return nil
	}
	return p.writeVolumesFile()
}

func (r *recovery) closeEngines() {
	for _, s := range r.stores {
		if s.eng != nil {
			_ = s.eng.Close()
			s.eng = nil
		}
	}
}

// recovering returns the recovery while the stores are in recovery mode.
func (p *Playground) recovering() *recovery {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.recovery == nil {
		return nil
	}
	p.recovery.mu.Lock()
	defer p.recovery.mu.Unlock()
	if p.recovery.ended {
		return nil
	}
	return p.recovery
}

// Recovering reports whether the stores run in snapshot-recovery mode.
func (p *Playground) Recovering() bool { return p.recovering() != nil }

// markerLoop polls PD's marker and ends recovery mode once it is deleted
// after the cluster was built.
func (p *Playground) markerLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(markerPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rec := p.recovering()
		if rec == nil {
			return
		}
		marked, err := p.pd().SnapshotRecovering(ctx)
		if err != nil || marked {
			continue
		}
		rec.mu.Lock()
		built := rec.built && rec.err == nil
		rec.mu.Unlock()
		if !built {
			p.log.Warn("snapshot-recovering marker deleted before the cluster was recovered: the stores stay in recovery mode")
			continue
		}
		if err := p.Cluster.EndRecovery(); err != nil {
			p.log.Error("leave recovery mode", "error", err)
			continue
		}
		rec.mu.Lock()
		rec.ended = true
		rec.mu.Unlock()
		p.log.Info("snapshot-recovering marker deleted: stores left recovery mode")
		return
	}
}

// recoverData is one store's recover_data.RecoverData service.
type recoverData struct {
	recoverdatapb.UnimplementedRecoverDataServer
	p       *Playground
	storeID uint64
}

var _ recoverdatapb.RecoverDataServer = (*recoverData)(nil)

func (s *recoverData) register(g *grpc.Server) { recoverdatapb.RegisterRecoverDataServer(g, s) }

// state returns the recovery and this store's part, or the error a TiKV
// outside recovery mode answers: it has no such service.
func (s *recoverData) state() (*recovery, *recoveringStore, error) {
	rec := s.p.recovering()
	if rec == nil {
		return nil, nil, status.Error(codes.Unimplemented, "unknown service recover_data.RecoverData")
	}
	st := rec.stores[s.storeID]
	if st == nil {
		return nil, nil, status.Error(codes.Unimplemented, "unknown service recover_data.RecoverData")
	}
	return rec, st, nil
}

func (s *recoverData) ReadRegionMeta(_ *recoverdatapb.ReadRegionMetaRequest, stream recoverdatapb.RecoverData_ReadRegionMetaServer) error {
	rec, st, err := s.state()
	if err != nil {
		return err
	}
	rec.mu.Lock()
	built := rec.built && rec.err == nil
	rec.mu.Unlock()
	if built {
		// A rerun of the protocol (BR's data phase retried before PD's
		// marker was cleared): TiKV keeps no "recovered" state and
		// reports its peers as they are now (services.rs read_region_meta
		// collects the local regions each time), here the built
		// cluster's, all at the shared engine's index.
		applied := s.p.Engine.AppliedIndex()
		for _, r := range s.p.Cluster.Regions() {
			pr := r.PeerOn(s.storeID)
			if pr == nil {
				continue
			}
			if err := stream.Send(&recoverdatapb.RegionMeta{
				RegionId: r.ID, PeerId: pr.GetId(), LastLogTerm: lastLogTerm, LastIndex: applied, CommitIndex: applied,
				Version: r.Epoch.GetVersion(), StartKey: r.StartKey, EndKey: r.EndKey,
			}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range st.meta.Regions {
		// Keys as the region's local state holds them: memcomparable
		// encoded, without the data prefix (region_meta_collector.rs
		// to_region_meta copies region.start_key/end_key).
		if err := stream.Send(&recoverdatapb.RegionMeta{
			RegionId: r.RegionID, PeerId: r.PeerID,
			LastLogTerm: lastLogTerm, LastIndex: st.applied, CommitIndex: st.applied,
			Version: r.Version, StartKey: r.StartKey, EndKey: r.EndKey,
		}); err != nil {
			return err
		}
	}
	return nil
}

func (s *recoverData) RecoverRegion(stream recoverdatapb.RecoverData_RecoverRegionServer) error {
	rec, st, err := s.state()
	if err != nil {
		return err
	}
	leaders, tomb := map[uint64]bool{}, map[uint64]bool{}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if req.GetAsLeader() {
			leaders[req.GetRegionId()] = true
		}
		if req.GetTombstone() {
			tomb[req.GetRegionId()] = true
		}
	}
	rec.mu.Lock()
	if rec.built {
		rec.mu.Unlock()
		// A rerun: TiKV forces the named peers to lead again and waits
		// for them (services.rs recover_region, LeaderKeeper); the built
		// cluster has no stale peer to tombstone.
		for rid := range leaders {
			if err := s.p.Cluster.TransferLeader(rid, s.storeID); err != nil {
				return stream.SendAndClose(&recoverdatapb.RecoverRegionResponse{StoreId: s.storeID,
					Error: &recoverdatapb.Error{Msg: fmt.Sprintf("region %d: %v", rid, err)}})
			}
		}
		return stream.SendAndClose(&recoverdatapb.RecoverRegionResponse{StoreId: s.storeID})
	}
	st.leaders, st.tombstone = leaders, tomb
	if !st.reported {
		st.reported = true
		rec.pending--
		if rec.pending == 0 {
			close(rec.allIn)
		}
	}
	rec.mu.Unlock()
	return stream.SendAndClose(&recoverdatapb.RecoverRegionResponse{StoreId: s.storeID})
}

func (s *recoverData) WaitApply(ctx context.Context, _ *recoverdatapb.WaitApplyRequest) (*recoverdatapb.WaitApplyResponse, error) {
	rec, _, err := s.state()
	if err != nil {
		return nil, err
	}
	select {
	case <-rec.allIn:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !rec.built {
		rec.built = true
		rec.err = s.p.buildRecovered(rec)
		if rec.err != nil {
			s.p.log.Error("snapshot recovery failed", "error", rec.err)
		}
	}
	if rec.err != nil {
		return &recoverdatapb.WaitApplyResponse{Error: &recoverdatapb.Error{Msg: rec.err.Error()}}, nil
	}
	return &recoverdatapb.WaitApplyResponse{}, nil
}

// buildRecovered builds the recovered cluster from the stores' reports.
// rec.mu is held.
func (p *Playground) buildRecovered(rec *recovery) error {
	defer rec.closeEngines()
	type elected struct {
		store  *recoveringStore
		region cluster.PeerRegion
	}
	chosen := map[uint64]elected{}
	live := map[uint64][]metapb.Peer{} // region id -> peers not tombstoned
	var ids []uint64
	for id := range rec.stores {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		st := rec.stores[id]
		byID := map[uint64]cluster.PeerRegion{}
		for _, r := range st.meta.Regions {
			byID[r.RegionID] = r
			if !st.tombstone[r.RegionID] {
				live[r.RegionID] = append(live[r.RegionID], metapb.Peer{Id: r.PeerID, StoreId: id})
			}
		}
		for rid := range st.leaders {
			r, ok := byID[rid]
			if !ok {
				return fmt.Errorf("store %d was elected leader of region %d, of which it holds no peer", id, rid)
			}
			if o, dup := chosen[rid]; dup {
				return fmt.Errorf("region %d: stores %d and %d were both elected leader", rid, o.store.id, id)
			}
			chosen[rid] = elected{store: st, region: r}
		}
	}
	var regions []*cluster.Region
	for rid, e := range chosen {
		r := &cluster.Region{ID: rid, StartKey: e.region.StartKey, EndKey: e.region.EndKey,
			Epoch:  metapb.RegionEpoch{Version: e.region.Version, ConfVer: e.region.ConfVer},
			Peers:  live[rid],
			Leader: e.store.id}
		if r.PeerOn(e.store.id) == nil {
			return fmt.Errorf("region %d: its elected leader on store %d was told to tombstone", rid, e.store.id)
		}
		regions = append(regions, r)
	}
	sort.Slice(regions, func(i, j int) bool { return bytes.Compare(regions[i].StartKey, regions[j].StartKey) < 0 })
	// A region no store was told to lead is stale when an elected region
	// overlaps it (BR's CheckConsistencyAndValidPeer drops the lower
	// version of overlapping regions, and sends its tombstones without a
	// region id); otherwise its range would be lost.
	for _, id := range ids {
		for _, r := range rec.stores[id].meta.Regions {
			if _, ok := chosen[r.RegionID]; ok {
				continue
			}
			stale := false
			for _, e := range regions {
				if rangesOverlap(r.StartKey, r.EndKey, e.StartKey, e.EndKey) {
					stale = true
					break
				}
			}
			if !stale {
				return fmt.Errorf("region %d [%x, %x) has no leader elected and no elected region covers it: BR's leader selection must not leave gaps", r.RegionID, r.StartKey, r.EndKey)
			}
		}
	}
	// The elected regions must cover the key space once, with no overlap
	// and no gap: BR's leader selection must not leave gaps.
	var at []byte
	for i, r := range regions {
		switch c := bytes.Compare(r.StartKey, at); {
		case i > 0 && (len(at) == 0 || c < 0):
			return fmt.Errorf("elected regions %d and %d overlap: BR's leader selection must keep only the newer one", regions[i-1].ID, r.ID)
		case c > 0:
			return fmt.Errorf("no elected region covers [%x, %x): BR's leader selection must not leave gaps", at, r.StartKey)
		}
		at = r.EndKey
	}
	if len(regions) == 0 {
		return errors.New("no region was elected a leader")
	}
	if len(at) != 0 {
		return fmt.Errorf("no elected region covers [%x, +inf): BR's leader selection must not leave gaps", at)
	}
	for _, r := range regions {
		start, end := r.RawRange()
		mods, err := chosen[r.ID].store.eng.RangeRecords(start, end)
		if err != nil {
			return fmt.Errorf("region %d: read store %d's copy: %w", r.ID, r.Leader, err)
		}
		if err := p.Engine.Load(mods); err != nil {
			return fmt.Errorf("region %d: load: %w", r.ID, err)
		}
	}
	if err := p.Cluster.InstallRecovered(regions); err != nil {
		return err
	}
	p.log.Info("cluster recovered from volumes", "regions", len(regions))
	return nil
}

// rangesOverlap reports whether two encoded ranges ("" end = +inf) overlap.
func rangesOverlap(s1, e1, s2, e2 []byte) bool {
	return (len(e2) == 0 || bytes.Compare(s1, e2) < 0) && (len(e1) == 0 || bytes.Compare(s2, e1) < 0)
}

func (s *recoverData) ResolveKvData(req *recoverdatapb.ResolveKvDataRequest, stream recoverdatapb.RecoverData_ResolveKvDataServer) error {
	rec, _, err := s.state()
	if err != nil {
		return err
	}
	rec.mu.Lock()
	built, berr := rec.built, rec.err
	rec.mu.Unlock()
	if !built || berr != nil {
		return status.Error(codes.FailedPrecondition, "resolve kv data: the cluster is not recovered (WaitApply first)")
	}
	ts := req.GetResolvedTs()
	for _, r := range s.p.Cluster.Regions() {
		if r.PeerOn(s.storeID) == nil {
			continue
		}
		start, end := r.RawRange()
		st, err := s.p.Engine.ResolveRange(start, end, ts)
		if err != nil {
			return status.Errorf(codes.Internal, "resolve region %d: %v", r.ID, err)
		}
		if st.Writes == 0 && st.Locks == 0 {
			continue
		}
		if err := stream.Send(&recoverdatapb.ResolveKvDataResponse{StoreId: s.storeID,
			ResolvedKeyCount: uint64(st.Writes + st.Locks), CurrentCommitTs: st.MaxCommitTS}); err != nil {
			return err
		}
	}
	return stream.Send(&recoverdatapb.ResolveKvDataResponse{StoreId: s.storeID, ResolvedKeyCount: 0})
}
