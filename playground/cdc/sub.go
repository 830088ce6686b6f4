package cdc

import (
	"bytes"
	"errors"
	"sync/atomic"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// Subscription states (delegate.rs DownstreamState).
const (
	stateUninitialized = iota // waiting for a scan permit and the capture
	stateInitializing         // observing; incremental scan running
	stateNormal               // INITIALIZED sent; resolved ts advance
)

// sub is one (request_id, region_id) subscription of a stream. Fields
// below "guarded by conn.mu" are only touched under it.
type sub struct {
	c          *conn
	key        subKey
	checkpoint uint64
	epochVer   uint64
	reqStart   []byte // memcomparable-encoded request span
	reqEnd     []byte
	filterLoop bool

	// span is set before the observer is registered and never changes.
	span span
	// gone mirrors stopped for the observer's lock-free fast path.
	gone atomic.Bool
	// d is the region's delegate the subscription joined at Register.
	d *delegate

	// guarded by conn.mu
	state      int
	stopped    bool
	captured   bool
	cancel     func()        // unregisters the observer
	done       chan struct{} // closed when stopped
	locks      lockSet
	seeded     bool     // locks hold the snapshot's locks
	pending    []lockOp // lock changes observed before seeded
	advancedTo uint64
}

func newSub(c *conn, k subKey, req *cdcpb.ChangeDataRequest) *sub {
	return &sub{
		c:          c,
		key:        k,
		checkpoint: req.CheckpointTs,
		epochVer:   req.GetRegionEpoch().GetVersion(),
		reqStart:   append([]byte(nil), req.StartKey...),
		reqEnd:     append([]byte(nil), req.EndKey...),
		filterLoop: req.FilterLoop,
		done:       make(chan struct{}),
	}
}

var errStopped = errors.New("subscription stopped")

// run waits for a scan permit, captures the region and scans it.
func (s *sub) run() {
	svc := s.c.svc
	defer svc.pending.Add(-1)
	select {
	case svc.scanSem <- struct{}{}:
	case <-s.done:
		return
	case <-svc.stop:
		return
	}
	defer func() { <-svc.scanSem }()
	snap := s.capture()
	if snap == nil {
		return
	}
	defer snap.Release()
	if err := s.scan(snap); err != nil && !errors.Is(err, errStopped) {
		svc.log.Warn("incremental scan failed", "region", s.key.regionID, "request", s.key.requestID, "error", err)
		// TiKV's fallback for internal errors is RegionNotFound.
		s.c.mu.Lock()
		s.c.stopLocked(s, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: s.key.regionID}})
		s.c.mu.Unlock()
	}
}

// capture checks the region and registers the observer with its snapshot,
// all under the cluster's read lock so that no topology change interleaves
// (TiKV's capture-change command runs in raft apply order). It returns nil
// when the subscription ended.
func (s *sub) capture() mvcc.Snapshot {
	c, svc := s.c, s.c.svc
	cl := svc.cfg.Cluster
	for {
		gen := svc.gen.Load()
		r, err := cl.RegionByID(s.key.regionID)
		if err != nil {
			c.mu.Lock()
			c.stopLocked(s, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: s.key.regionID}})
			c.mu.Unlock()
			return nil
		}
		var (
			snap  mvcc.Snapshot
			retry bool
			fail  *cdcpb.Error
		)
		cl.View(func() {
			// A topology change since RegionByID makes r stale: retry.
			if svc.gen.Load() != gen {
				retry = true
				return
			}
			if r.Leader != svc.cfg.StoreID {
				fail = &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: r.ID, Leader: r.LeaderPeer()}}
				return
			}
			if s.epochVer != r.Epoch.Version {
				// raftstore compare_region_epoch(include_region): the
				// current region only.
				fail = &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{CurrentRegions: []*metapb.Region{r.Meta()}}}
				return
			}
			s.span = observedSpan(r, s.reqStart, s.reqEnd)
			c.mu.Lock()
			if s.stopped {
				c.mu.Unlock()
				return
			}
			s.state = stateInitializing
			s.captured = true
			c.mu.Unlock()
			var cancel func()
			snap, cancel = svc.cfg.Engine.Observe(s.observe)
			c.mu.Lock()
			if s.stopped {
				svc.spawn(cancel)
			} else {
				s.cancel = cancel
			}
			c.mu.Unlock()
		})
		if retry {
			continue
		}
		if fail != nil {
			c.mu.Lock()
			c.stopLocked(s, fail)
			c.mu.Unlock()
		}
		return snap
	}
}

// scan runs the incremental scan over the snapshot and ends it with the
// INITIALIZED row; the subscription becomes Normal once that row is sent.
func (s *sub) scan(snap mvcc.Snapshot) error {
	c := s.c
	seed := lockSet{}
	var (
		rows []*cdcpb.Event_Row
		size int
	)
	add := func(r *cdcpb.Event_Row) error {
		if dropSource(r.TxnSource, s.filterLoop) {
			return nil
		}
		n := rowSize(r)
		if size+n >= eventMaxBytes && len(rows) > 0 {
			if err := s.pushScan(rows, size, nil); err != nil {
				return err
			}
			rows, size = nil, 0
		}
		rows = append(rows, r)
		size += n
		return nil
	}
	if !s.span.empty {
		err := snap.DeltaScan(s.span.start, s.span.end, s.checkpoint, func(e mvcc.DeltaEntry) error {
			if s.gone.Load() {
				return errStopped
			}
			if l := e.Lock; l != nil && (l.Type == mvcc.LockPut || l.Type == mvcc.LockDelete) {
				seed.track(e.Key, l.StartTS)
				r := &cdcpb.Event_Row{
					StartTs:   l.StartTS,
					Type:      cdcpb.Event_PREWRITE,
					OpType:    lockOp2Row(l.Type),
					Key:       e.Key,
					Value:     e.LockValue,
					OldValue:  e.LockOldValue,
					TxnSource: l.TxnSource,
				}
				if err := add(r); err != nil {
					return err
				}
			}
			for i, w := range e.Writes {
				op, ok := writeOp2Row(w.Write.Type)
				if !ok {
					continue
				}
				// Old value: the version visible at commit_ts-1 (TiKV's
				// scanner seeks the write CF from there).
				var old []byte
				if i+1 < len(e.Writes) {
					old = e.Writes[i+1].Value
				} else if w.CommitTS > 0 {
					v, ok, err := snap.Get(e.Key, w.CommitTS-1)
					if err != nil {
						return err
					}
					if ok {
						old = v
					}
				}
				r := &cdcpb.Event_Row{
					StartTs:   w.Write.StartTS,
					CommitTs:  w.CommitTS,
					Type:      cdcpb.Event_COMMITTED,
					OpType:    op,
					Key:       e.Key,
					OldValue:  old,
					TxnSource: w.Write.TxnSource,
				}
				if op == cdcpb.Event_Row_PUT {
					r.Value = w.Value
				}
				if err := add(r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	rows = append(rows, &cdcpb.Event_Row{Type: cdcpb.Event_INITIALIZED})
	// The lock tracker is ready: the snapshot's locks plus every change
	// observed since the snapshot, replayed in order.
	c.mu.Lock()
	if !s.stopped {
		for _, op := range s.pending {
			seed.apply(op)
		}
		s.locks, s.pending, s.seeded = seed, nil, true
	}
	c.mu.Unlock()
	return s.pushScan(rows, size, func() {
		c.mu.Lock()
		if !s.stopped && s.state == stateInitializing {
			s.state = stateNormal
		}
		c.mu.Unlock()
	})
}

// pushScan queues one Event of scan rows, waiting while the stream's scan
// capacity is used up: a slow consumer slows the scan down.
func (s *sub) pushScan(rows []*cdcpb.Event_Row, size int, after func()) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.scanItems >= scanChannelCap && !s.stopped && c.err == nil {
		c.cond.Wait()
	}
	if s.stopped || c.err != nil {
		return errStopped
	}
	c.pushLocked(item{ev: s.rowsEvent(rows), size: size, scan: true, after: after})
	return nil
}

func (s *sub) rowsEvent(rows []*cdcpb.Event_Row) *cdcpb.Event {
	return &cdcpb.Event{
		RegionId:  s.key.regionID,
		RequestId: s.key.requestID,
		Event:     &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows}},
	}
}

// observe is the engine observer: it runs synchronously in the apply path,
// so it never blocks. Rows that do not fit the store's memory quota end the
// subscription with Congested.
func (s *sub) observe(cmd *mvcc.Command) {
	if s.gone.Load() || s.d.failed.Load() {
		return
	}
	rows, ops := liveRows(cmd, s.span, s.filterLoop)
	if len(rows) == 0 && len(ops) == 0 {
		return
	}
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.stopped {
		return
	}
	for _, op := range ops {
		if s.seeded {
			s.locks.apply(op)
		} else {
			s.pending = append(s.pending, op)
		}
	}
	if len(rows) == 0 {
		return
	}
	type chunk struct {
		rows []*cdcpb.Event_Row
		size int
	}
	var chunks []chunk
	var total int
	for _, r := range rows {
		n := rowSize(r)
		if len(chunks) == 0 || (chunks[len(chunks)-1].size+n >= eventMaxBytes && len(chunks[len(chunks)-1].rows) > 0) {
			chunks = append(chunks, chunk{})
		}
		ch := &chunks[len(chunks)-1]
		ch.rows = append(ch.rows, r)
		ch.size += n
		total += n
	}
	if !c.svc.quotaAlloc(int64(total)) {
		// TiKV: sink_cdc_event fails with Congested, Delegate::on_batch
		// fails, Endpoint::on_multi_batch deregisters the whole delegate
		// and Delegate::stop sends the error to every downstream of the
		// region, on every connection.
		c.svc.log.Warn("cdc memory quota exceeded; stopping the region for every subscriber", "region", s.key.regionID, "request", s.key.requestID)
		c.stopLocked(s, &cdcpb.Error{Congested: &cdcpb.Congested{RegionId: s.key.regionID}})
		c.svc.failDelegate(s.d)
		return
	}
	for _, ch := range chunks {
		c.pushLocked(item{ev: s.rowsEvent(ch.rows), size: ch.size, live: int64(ch.size)})
	}
}

// span is a subscription's observed range in raw keys: [start, end), an
// empty end is +inf.
type span struct {
	start, end []byte
	empty      bool
}

func (sp span) contains(k []byte) bool {
	return !sp.empty && bytes.Compare(k, sp.start) >= 0 && (len(sp.end) == 0 || bytes.Compare(k, sp.end) < 0)
}

// observedSpan intersects the region with the request's encoded span. A
// span that does not decode is ignored (TiKV falls back to the default
// ObservedRange, which covers the whole region).
func observedSpan(r *cluster.Region, reqStart, reqEnd []byte) span {
	start, end := r.StartKey, r.EndKey
	if validEncoded(reqStart) && validEncoded(reqEnd) {
		if bytes.Compare(reqStart, start) > 0 {
			start = reqStart
		}
		if len(reqEnd) > 0 && (len(end) == 0 || bytes.Compare(reqEnd, end) < 0) {
			end = reqEnd
		}
	}
	sp := span{start: cluster.DecodeKey(start), end: cluster.DecodeKey(end)}
	if sp.start == nil {
		sp.start = []byte{}
	}
	if len(end) > 0 && bytes.Compare(start, end) >= 0 {
		sp.empty = true
	}
	return sp
}

func validEncoded(k []byte) bool {
	if len(k) == 0 {
		return true
	}
	rest, _, err := codec.DecodeBytes(k, nil)
	return err == nil && len(rest) == 0
}
