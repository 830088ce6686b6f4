package cdc

import (
	"container/heap"
	"context"
	"errors"
	"io"
	"sort"
	"sync"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
)

// subKey identifies a subscription on a stream.
type subKey struct {
	requestID uint64
	regionID  uint64
}

// item is one queued output: an Event (rows, error or per-region resolved
// ts) or a store-level ResolvedTs.
type item struct {
	ev   *cdcpb.Event
	rts  *cdcpb.ResolvedTs
	size int
	// scan items count against the stream's scan capacity, live bytes
	// against the store's memory quota.
	scan bool
	live int64
	// after runs once the item was handed to gRPC.
	after func()
}

// conn is one EventFeed stream.
type conn struct {
	svc          *Service
	stream       eventStream
	multiplexing bool

	mu   sync.Mutex
	cond *sync.Cond
	// Features, fixed by the first request.
	versioned      bool
	batchResolved  bool
	checkClusterID bool

	subs      map[subKey]*sub
	q         []item
	scanItems int  // scan items queued and not yet sent
	draining  bool // client closed its side: send what is queued, then end
	err       error
	done      chan struct{} // closed once err is set
}

func newConn(s *Service, stream eventStream, multiplexing bool) *conn {
	c := &conn{svc: s, stream: stream, multiplexing: multiplexing, subs: map[subKey]*sub{}, done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// fail ends the stream with err (sent as the RPC status) and every
// subscription with it, without sending anything more.
func (c *conn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(err)
}

func (c *conn) failLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	close(c.done)
	for _, s := range c.subs {
		c.stopLocked(s, nil)
	}
	c.cond.Broadcast()
}

// push queues an item; the caller holds c.mu.
func (c *conn) pushLocked(it item) {
	c.q = append(c.q, it)
	if it.scan {
		c.scanItems++
	}
	c.cond.Broadcast()
}

// sendErrorLocked queues an error event for (request_id, region_id). Errors
// bypass flow control, as TiKV sends them with force.
func (c *conn) sendErrorLocked(k subKey, e *cdcpb.Error) {
	if c.err != nil {
		return
	}
	c.pushLocked(item{ev: &cdcpb.Event{RegionId: k.regionID, RequestId: k.requestID, Event: &cdcpb.Event_Error{Error: e}}})
}

// stopLocked removes a subscription, queueing e (if any) as its last event.
func (c *conn) stopLocked(s *sub, e *cdcpb.Error) {
	if s.stopped {
		return
	}
	s.stopped = true
	s.gone.Store(true)
	if c.subs[s.key] == s {
		delete(c.subs, s.key)
	}
	c.svc.leaveDelegate(s)
	if e != nil {
		c.sendErrorLocked(s.key, e)
	}
	close(s.done)
	if s.cancel != nil {
		cancel := s.cancel
		s.cancel = nil
		// The engine may hold its own locks while calling observers: never
		// cancel an observer from under c.mu or from inside an observer.
		c.svc.spawn(cancel)
	}
	c.cond.Broadcast()
}

// sendLoop drains the queue into the stream; it returns the RPC status.
func (c *conn) sendLoop() error {
	ctx := c.stream.Context()
	stopWatch := context.AfterFunc(ctx, func() { c.fail(status.FromContextError(ctx.Err()).Err()) })
	defer stopWatch()
	for {
		c.mu.Lock()
		for len(c.q) == 0 && c.err == nil && !c.draining {
			c.cond.Wait()
		}
		if c.err != nil {
			err := c.err
			c.dropQueueLocked()
			c.mu.Unlock()
			return err
		}
		if len(c.q) == 0 { // draining and empty
			c.failLocked(errDrained)
			c.mu.Unlock()
			return nil
		}
		msg, n := c.batchLocked()
		batch := c.q[:n:n]
		c.q = c.q[n:]
		c.mu.Unlock()

		err := c.stream.Send(msg)

		var scan int
		var live int64
		for _, it := range batch {
			if it.scan {
				scan++
			}
			live += it.live
		}
		c.svc.quotaFree(live)
		c.mu.Lock()
		c.scanItems -= scan
		if err != nil {
			c.failLocked(status.Error(codes.Unknown, "send: "+err.Error()))
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		if err != nil {
			return c.err
		}
		for _, it := range batch {
			if it.after != nil {
				it.after()
			}
		}
	}
}

var errDrained = errors.New("stream drained")

func (c *conn) dropQueueLocked() {
	var live int64
	for _, it := range c.q {
		live += it.live
	}
	c.svc.quotaFree(live)
	c.q = nil
	c.scanItems = 0
}

// batchLocked builds the next ChangeDataEvent from the head of the queue: a
// store-level ResolvedTs alone, or up to 64 Events within 6 MiB.
func (c *conn) batchLocked() (*cdcpb.ChangeDataEvent, int) {
	if c.q[0].rts != nil {
		return &cdcpb.ChangeDataEvent{ResolvedTs: c.q[0].rts}, 1
	}
	msg := &cdcpb.ChangeDataEvent{}
	size, n := 0, 0
	for n < len(c.q) && c.q[n].ev != nil && len(msg.Events) < eventMaxCount {
		if n > 0 && size+c.q[n].size > respMaxBytes {
			break
		}
		msg.Events = append(msg.Events, c.q[n].ev)
		size += c.q[n].size
		n++
	}
	return msg, n
}

// recvLoop reads requests until the client closes its side or the stream
// ends.
func (c *conn) recvLoop() {
	first := true
	for {
		req, err := c.stream.Recv()
		if err != nil {
			c.mu.Lock()
			if errors.Is(err, io.EOF) {
				// TiKV deregisters everything of the Conn; what is queued
				// still goes out, then the stream ends.
				for _, s := range c.subs {
					c.stopLocked(s, nil)
				}
				c.draining = true
				c.cond.Broadcast()
			} else {
				c.failLocked(status.Convert(err).Err())
			}
			c.mu.Unlock()
			return
		}
		if first {
			first = false
			c.setFeatures(req.GetHeader().GetTicdcVersion())
		}
		if !c.svc.v73 {
			// TiKV before 7.3 (service.rs event_feed) turns every request
			// into a Register: its kvproto has no Deregister.
			c.register(req)
			continue
		}
		switch r := req.Request.(type) {
		case nil, *cdcpb.ChangeDataRequest_Register_:
			c.register(req)
		case *cdcpb.ChangeDataRequest_Deregister_:
			c.deregister(req)
		case *cdcpb.ChangeDataRequest_NotifyTxnStatus_:
			// TiKV hits unreachable!() and the whole store goes down; its
			// clients see the transport break.
			_ = r
			c.svc.log.Error("NotifyTxnStatus is not supported; failing the stream")
			c.fail(status.Error(codes.Unavailable, "NotifyTxnStatus is not supported"))
			return
		}
	}
}

func (c *conn) setFeatures(version string) {
	v, ok := parseSemver(version)
	if !ok {
		c.svc.log.Warn("empty or invalid TiCDC version, please upgrade TiCDC", "version", version)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.versioned = true
	c.batchResolved = !v.less(semver{4, 0, 8, ""})
	c.checkClusterID = !v.less(semver{5, 3, 0, ""})
}

func (c *conn) register(req *cdcpb.ChangeDataRequest) {
	s := c.svc
	k := subKey{requestID: req.RequestId, regionID: req.RegionId}
	// TiKV asks its store meta whether the region is here; every playground
	// store holds a peer of every region, so the cluster book is the store
	// meta. Cluster methods are never called under c.mu: the topology
	// watcher holds the cluster lock while it takes c.mu.
	s.registers.Add(1)
	r, rerr := s.cfg.Cluster.RegionByID(req.RegionId)
	if rerr == nil && r.PeerOn(s.cfg.StoreID) == nil {
		rerr = cluster.ErrRegionNotFound // no peer here: the store does not know it
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.draining {
		return
	}
	switch {
	case c.checkClusterID && req.GetHeader().GetClusterId() != s.cfg.ClusterID:
		c.sendErrorLocked(k, &cdcpb.Error{ClusterIdMismatch: &cdcpb.ClusterIDMismatch{
			Current: s.cfg.ClusterID, Request: req.GetHeader().GetClusterId(),
		}})
	case req.KvApi != cdcpb.ChangeDataRequest_TiDB:
		c.sendErrorLocked(k, &cdcpb.Error{Compatibility: &cdcpb.Compatibility{RequiredVersion: "6.2.0"}})
	case s.pending.Load() >= int64(s.cfg.PendingScansLimit):
		c.sendErrorLocked(k, &cdcpb.Error{ServerIsBusy: &errorpb.ServerIsBusy{Reason: "too many pending incremental scans"}})
	case rerr != nil:
		c.sendErrorLocked(k, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: req.RegionId}})
	case c.subs[k] != nil, !s.v73 && c.hasRegionLocked(req.RegionId):
		// Before 7.3 a Conn holds one downstream per region (v7.1
		// service.rs Conn.downstreams keyed by region id, endpoint.rs
		// on_register: !conn.subscribe → DuplicateRequest).
		c.sendErrorLocked(k, &cdcpb.Error{DuplicateRequest: &cdcpb.DuplicateRequest{RegionId: req.RegionId}})
	default:
		sb := newSub(c, k, req)
		c.subs[k] = sb
		s.joinDelegate(sb)
		s.pending.Add(1)
		s.spawn(sb.run)
	}
}

func (c *conn) hasRegionLocked(regionID uint64) bool {
	for k := range c.subs {
		if k.regionID == regionID {
			return true
		}
	}
	return false
}

func (c *conn) deregister(req *cdcpb.ChangeDataRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var victims []*sub
	if req.RegionId != 0 {
		if s := c.subs[subKey{req.RequestId, req.RegionId}]; s != nil {
			victims = append(victims, s)
		}
	} else {
		for k, s := range c.subs {
			if k.requestID == req.RequestId {
				victims = append(victims, s)
			}
		}
		sort.Slice(victims, func(i, j int) bool { return victims[i].key.regionID < victims[j].key.regionID })
	}
	for _, s := range victims {
		c.stopLocked(s, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: s.key.regionID}})
	}
}

// onTopology turns a topology change into errors for the subscriptions it
// ends. It runs under the cluster's write lock, so every command applied
// before the change has already queued its rows.
func (c *conn) onTopology(ev cluster.Event) {
	me := c.svc.cfg.StoreID
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	stopRegion := func(regionID uint64, e func() *cdcpb.Error) {
		var victims []*sub
		for _, s := range c.subs {
			if s.key.regionID == regionID && s.captured {
				victims = append(victims, s)
			}
		}
		sort.Slice(victims, func(i, j int) bool { return victims[i].key.requestID < victims[j].key.requestID })
		for _, s := range victims {
			c.stopLocked(s, e())
		}
	}
	switch ev.Kind {
	case cluster.EventSplit:
		old := ev.Old[0]
		stopRegion(old.ID, func() *cdcpb.Error {
			var cur []*metapb.Region
			for _, r := range ev.New {
				cur = append(cur, r.Meta())
			}
			return &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{CurrentRegions: cur}}
		})
	case cluster.EventMerge:
		src, dst := ev.Old[0], ev.Old[1]
		stopRegion(src.ID, func() *cdcpb.Error {
			return &cdcpb.Error{EpochNotMatch: &errorpb.EpochNotMatch{}}
		})
		stopRegion(dst.ID, func() *cdcpb.Error {
			return &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: dst.ID}}
		})
	case cluster.EventLeaderChange:
		old, cur := ev.Old[0], ev.New[0]
		if old.Leader == me && cur.Leader != me {
			stopRegion(cur.ID, func() *cdcpb.Error {
				return &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: cur.ID, Leader: cur.LeaderPeer()}}
			})
		}
	}
}

// advance runs one resolved-ts round on this stream with the round's
// min ts. It holds c.mu throughout, so it is ordered with every observed
// command: rows of commands observed before it are queued before it.
func (c *conn) advance(minTS uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || !c.versioned {
		return
	}
	type group struct {
		requestID uint64
		h         regionHeap
	}
	groups := map[uint64]*group{}
	var compat []*sub
	for _, s := range c.subs {
		if s.state != stateNormal || s.d.failed.Load() {
			// A failed delegate drops rows from the moment it fails and
			// its subscriptions are stopped on a goroutine: TiKV marks
			// every downstream Stopped at once and reports no resolved
			// ts for it (delegate.rs Delegate::stop).
			continue
		}
		resolved := minTS
		if l, ok := s.locks.min(); ok && l < resolved {
			resolved = l
		}
		if resolved > s.advancedTo {
			s.advancedTo = resolved
		}
		if s.advancedTo == 0 {
			continue
		}
		switch {
		case !c.batchResolved:
			compat = append(compat, s)
		default:
			gid := uint64(0)
			if c.multiplexing {
				gid = s.key.requestID
			}
			g := groups[gid]
			if g == nil {
				g = &group{requestID: gid}
				groups[gid] = g
			}
			g.h = append(g.h, regionTS{region: s.key.regionID, ts: s.advancedTo})
		}
	}
	gids := make([]uint64, 0, len(groups))
	for id := range groups {
		gids = append(gids, id)
	}
	sort.Slice(gids, func(i, j int) bool { return gids[i] < gids[j] })
	for _, id := range gids {
		g := groups[id]
		heap.Init(&g.h)
		for batch := 8; g.h.Len() > 0; batch *= 4 {
			rts := &cdcpb.ResolvedTs{RequestId: g.requestID}
			for i := 0; i < batch && g.h.Len() > 0; i++ {
				r := heap.Pop(&g.h).(regionTS)
				if i == 0 {
					rts.Ts = r.ts
				}
				rts.Regions = append(rts.Regions, r.region)
			}
			c.pushLocked(item{rts: rts})
		}
	}
	// Compat: one Event per (conn, region), like TiKV's map keyed by both.
	sort.Slice(compat, func(i, j int) bool { return compat[i].key.regionID < compat[j].key.regionID })
	seen := map[uint64]bool{}
	for _, s := range compat {
		if seen[s.key.regionID] {
			continue
		}
		seen[s.key.regionID] = true
		c.pushLocked(item{ev: &cdcpb.Event{
			RegionId: s.key.regionID, RequestId: s.key.requestID,
			Event: &cdcpb.Event_ResolvedTs{ResolvedTs: s.advancedTo},
		}, size: 16})
	}
}

type regionTS struct {
	region uint64
	ts     uint64
}

// regionHeap is a min-heap of regions by resolved ts.
type regionHeap []regionTS

func (h regionHeap) Len() int { return len(h) }
func (h regionHeap) Less(i, j int) bool {
	if h[i].ts != h[j].ts {
		return h[i].ts < h[j].ts
	}
	return h[i].region < h[j].region
}
func (h regionHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *regionHeap) Push(x any)   { *h = append(*h, x.(regionTS)) }
func (h *regionHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
