package cluster

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/pingcap/kvproto/pkg/errorpb"
)

// Snapshot recovery (stores started on restored volumes, see
// playground/recovery.go). While the cluster recovers:
//   - the region book starts empty; a request for a region a store holds a
//     peer of (its raft volume says so) is answered NotLeader without a
//     leader, any other RegionNotFound, as a TiKV in recovery mode whose
//     peers have not elected a leader answers;
//   - a store coming up elects nothing;
//   - InstallRecovered puts the elected regions in the book, still without
//     leaders; EndRecovery gives them the elected leaders.

// BeginRecovery replaces the stores by storeIDs (down, no address) and
// empties the region book; peers maps a region id to the stores whose raft
// volume holds a peer of it.
//
// Neither this nor InstallRecovered moves the id allocator: PD learns the
// restored ids only from POST admin/base-alloc-id (BR sets it above every
// id the stores reported, tikv/pd server/api/admin.go recoverAllocID), so
// a recovery that skips it allocates ids the restored regions hold.
func (c *Cluster) BeginRecovery(storeIDs []uint64, peers map[uint64][]uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stores = map[uint64]*Store{}
	for _, id := range storeIDs {
		c.stores[id] = &Store{ID: id}
	}
	c.regions = nil
	c.before = map[uint64]*Region{}
	c.recovering = true
	c.recoveryPeers = map[uint64]map[uint64]bool{}
	for rid, ss := range peers {
		m := map[uint64]bool{}
		for _, s := range ss {
			m[s] = true
		}
		c.recoveryPeers[rid] = m
	}
	return c.saveLocked()
}

// Recovering reports whether the cluster is in snapshot recovery.
func (c *Cluster) Recovering() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.recovering
}

// InstallRecovered puts the recovered regions in the book. Each region's
// Leader is the store elected for it; the book keeps it aside and shows
// the region leaderless until EndRecovery. The regions must not overlap.
func (c *Cluster) InstallRecovered(regions []*Region) error {
	rs := make([]*Region, len(regions))
	leaders := map[uint64]uint64{}
	for i, r := range regions {
		rs[i] = r.Clone()
		leaders[r.ID] = r.Leader
		rs[i].Leader = 0
	}
	sortRegions(rs)
	for i := 1; i < len(rs); i++ {
		if len(rs[i-1].EndKey) == 0 || bytes.Compare(rs[i-1].EndKey, rs[i].StartKey) > 0 {
			return fmt.Errorf("recovered regions %d and %d overlap", rs[i-1].ID, rs[i].ID)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.recovering {
		return fmt.Errorf("install recovered regions: cluster is not recovering")
	}
	c.regions = rs
	c.recoveryPeers = nil
	c.elected = leaders
	return c.saveLocked()
}

// EndRecovery leaves snapshot recovery: each recovered region gets the
// leader elected for it (or, when that store is down, the first peer on a
// store that is up), and watchers see one EventLeaderChange per region.
func (c *Cluster) EndRecovery() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.recovering {
		return nil
	}
	c.recovering = false
	var events []Event
	for _, r := range c.regions {
		old := r.Clone()
		if s := c.stores[c.elected[r.ID]]; s != nil && s.Up && r.PeerOn(s.ID) != nil {
			r.Leader = s.ID
		} else {
			for _, p := range r.Peers {
				if s := c.stores[p.StoreId]; s != nil && s.Up {
					r.Leader = p.StoreId
					break
				}
			}
		}
		if r.Leader != 0 {
			events = append(events, Event{Kind: EventLeaderChange, Old: []*Region{old}, New: []*Region{r.Clone()}})
		}
	}
	c.elected = nil
	if err := c.saveLocked(); err != nil {
		return err
	}
	for _, ev := range events {
		c.emitLocked(ev)
	}
	return nil
}

// recoveryErrorLocked answers a request for a region that is not in the
// book while recovering, or returns nil.
func (c *Cluster) recoveryErrorLocked(storeID, regionID uint64) *errorpb.Error {
	if !c.recovering || !c.recoveryPeers[regionID][storeID] {
		return nil
	}
	return &errorpb.Error{
		Message:   fmt.Sprintf("peer is not leader for region %d, leader may None", regionID),
		NotLeader: &errorpb.NotLeader{RegionId: regionID},
	}
}

// RecoveryPeerStores returns, sorted, the stores holding a peer of the
// region while recovering (before InstallRecovered).
func (c *Cluster) RecoveryPeerStores(regionID uint64) []uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []uint64
	for s := range c.recoveryPeers[regionID] {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
