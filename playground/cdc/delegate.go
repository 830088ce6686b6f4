package cdc

import (
	"sort"
	"sync/atomic"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

// delegate is TiKV's per-region Delegate of a store (components/cdc/src
// delegate.rs): every subscription of one region, on every stream of the
// store. A sink failure of one of them stops all of them.
type delegate struct {
	region uint64
	failed atomic.Bool
	subs   map[*sub]struct{} // guarded by Service.dmu
}

// joinDelegate adds a new subscription to its region's delegate, creating
// one when the region has none (or only a failed one). The sub's conn.mu
// is held.
func (s *Service) joinDelegate(sb *sub) {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	d := s.delegates[sb.key.regionID]
	if d == nil {
		d = &delegate{region: sb.key.regionID, subs: map[*sub]struct{}{}}
		s.delegates[sb.key.regionID] = d
	}
	d.subs[sb] = struct{}{}
	sb.d = d
}

// leaveDelegate removes a stopped subscription; the last one out removes
// the delegate. The sub's conn.mu is held.
func (s *Service) leaveDelegate(sb *sub) {
	if sb.d == nil {
		return
	}
	s.dmu.Lock()
	defer s.dmu.Unlock()
	delete(sb.d.subs, sb)
	if len(sb.d.subs) == 0 && s.delegates[sb.key.regionID] == sb.d {
		delete(s.delegates, sb.key.regionID)
	}
}

// failDelegate stops every subscription of a delegate with Congested
// (Deregister::Delegate → Delegate::stop). The observers of the others
// drop rows from now on; they are stopped on a goroutine, because the
// caller holds one conn's mu and runs inside the apply path. A new
// Register of the region gets a fresh delegate.
func (s *Service) failDelegate(d *delegate) {
	if d.failed.Swap(true) {
		return
	}
	s.dmu.Lock()
	if s.delegates[d.region] == d {
		delete(s.delegates, d.region)
	}
	victims := make([]*sub, 0, len(d.subs))
	for sb := range d.subs {
		victims = append(victims, sb)
	}
	s.dmu.Unlock()
	sort.Slice(victims, func(i, j int) bool { return victims[i].key.requestID < victims[j].key.requestID })
	s.spawn(func() {
		for _, sb := range victims {
			sb.c.mu.Lock()
			sb.c.stopLocked(sb, &cdcpb.Error{Congested: &cdcpb.Congested{RegionId: d.region}})
			sb.c.mu.Unlock()
		}
	})
}
