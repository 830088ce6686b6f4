package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/clients/router"
	"golang.org/x/sync/errgroup"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

// ticdcVersion is the version the agent announces on EventFeed: ≥ 4.0.8 gets
// store-level batched ResolvedTs, ≥ 5.3.0 has the cluster id checked
// (TIKV-PROTOCOLS §1.1).
const ticdcVersion = "8.5.0"

// sink is what a capture needs of flush.Flusher.
type sink interface {
	Add(ctx context.Context, rows []logfile.Row) error
	Buffered() int64
	CutDue() bool
	Flush(ctx context.Context, flushTS uint64, regions []*pitrpb.RegionCoverage) (*pitrpb.Meta, error)
	Stats() flush.Stats
}

var _ sink = (*flush.Flusher)(nil)

// regionState is where a region's subscription is.
type regionState int

const (
	// stateIdle: no subscription; subscribe when PD confirms the region
	// and retryAt has passed.
	stateIdle regionState = iota
	// statePending: Register sent, INITIALIZED not received yet.
	statePending
	// stateNormal: initialized; resolved ts advances.
	stateNormal
	// stateStopping: Deregister sent (TiKV ≥ 7.3); waiting for TiKV's
	// RegionNotFound that ends the subscription.
	stateStopping
)

func (s regionState) String() string {
	return [...]string{"idle", "pending", "normal", "stopping"}[s]
}

// region is one region led by this store, clipped to one task range, and
// its subscription.
type region struct {
	id               uint64
	epoch            metapb.RegionEpoch
	start, end       []byte // raw: region ∩ task range
	encStart, encEnd []byte

	state     regionState
	requestID uint64
	m         *matcher // nil when idle
	// from is the region's checkpoint: storage holds every change committed
	// at or before it inside [start, end). It starts as the subscription's
	// checkpoint_ts and becomes to_ts of each stored flush.
	from     uint64
	reason   string    // why the region is idle or stopping
	retryAt  time.Time // earliest next subscribe (idle)
	busy     int       // consecutive ServerIsBusy/Congested
	failures int       // subscriptions ended since the region was last initialized
	since    time.Time // when state last changed

	budget budgetState // prewrite budget (matcher.go)
}

// sameAs reports whether PD's region is the one subscribed: same id, epoch
// version and range. conf_ver is not compared: a peer move changes only
// conf_ver, and TiKV CDC ignores it (delegate.rs check_epoch_on_ready:
// check_conf_ver false; sink_admin reacts only to splits and merges).
func (r *region) sameAs(p *pdRegion) bool {
	return r.epoch.Version == p.epoch.Version && bytes.Equal(r.start, p.start) && bytes.Equal(r.end, p.end)
}

func (r *region) setState(s regionState, now time.Time) {
	r.state = s
	r.since = now
}

// pdRegion is a region PD reports as led by this store, clipped to a task
// range.
type pdRegion struct {
	id               uint64
	epoch            metapb.RegionEpoch
	start, end       []byte
	encStart, encEnd []byte
}

// capture is one run of a task's capture: one EventFeed stream at a time to
// the local TiKV, the region subscriptions on it, and the flush loop.
type capture struct {
	cfg     captureConfig
	cl      clusterAPI
	health  healthReporter
	task    taskView
	met     *metrics
	pending *pendingAcct // the agent's, over every task
	log     hclog.Logger
	fl      sink

	mu        sync.Mutex
	regions   map[uint64]*region // by region id
	subs      map[uint64]*region // by request id
	nextReqID uint64
	feed      *feed  // current stream; nil while disconnected
	feedErr   string // why the stream is down
	flushErr  string // last flush error ("" after a good flush)
	lastFlush time.Time

	// deregister: the local TiKV has Deregister (≥ 7.3, read from PD's
	// metapb.Store.Version at every stream). Below it every request is a
	// Register, so a region is released by closing and reopening the
	// stream instead (TIKV-PROTOCOLS.md §8.1).
	deregister bool
	// blocked: the flusher was full past BlockedGrace. Regions whose rows
	// do not fit are released and nothing is subscribed until a probe Add
	// of held rows succeeds (probe).
	blocked bool
	// reopen: the stream must be closed and opened again to release
	// regions (TiKV < 7.3); recv ends the stream at the next message.
	reopen bool

	tso      func(context.Context) (uint64, error)
	stopped  chan struct{} // closed when run returns
	kick     chan struct{} // re-read regions from PD now (a change signal)
	wake     chan struct{} // subscribe due idle regions now (no PD scan)
	full     chan struct{} // the flusher's size policy wants a cut (CutDue)
	probe    chan []logfile.Row
	flushReq chan chan flushResult
}

type flushResult struct {
	meta *pitrpb.Meta
	err  error
}

func newCapture(r *runner, fl sink) *capture {
	a := r.a
	if a.wrapSink != nil {
		fl = a.wrapSink(fl)
	}
	return &capture{
		cfg: captureConfig{
			StoreID: a.storeID, ClusterID: a.clusterID, TiKVAddr: a.cfg.TiKVAddr,
			FlushInterval: a.cfg.FlushInterval, RegionInterval: a.cfg.RegionInterval, BlockedGrace: a.cfg.BlockedGrace,
			PrewriteBudget: a.cfg.PrewriteBudget,
		},
		cl: agentCluster{a}, health: a, task: r, met: a.met, pending: &a.pending,
		log: r.log, fl: fl, tso: a.tso,
		regions: map[uint64]*region{}, subs: map[uint64]*region{},
		kick: make(chan struct{}, 1), wake: make(chan struct{}, 1), full: make(chan struct{}, 1),
		probe: make(chan []logfile.Row, 1), flushReq: make(chan chan flushResult),
		stopped: make(chan struct{}),
	}
}

// captureConfig is the part of the agent's settings and identity a capture
// uses (see Config for each).
type captureConfig struct {
	StoreID, ClusterID                          uint64
	TiKVAddr                                    string
	FlushInterval, RegionInterval, BlockedGrace time.Duration
	PrewriteBudget                              int64
}

// clusterAPI is what a capture asks of the cluster: the local store's
// change stream, PD's regions and store record, and the task's global
// checkpoint in etcd.
type clusterAPI interface {
	EventFeed(ctx context.Context) (cdcpb.ChangeData_EventFeedClient, error)
	ScanRegions(ctx context.Context, key, endKey []byte, limit int) ([]*router.Region, error)
	GetStore(ctx context.Context, storeID uint64) (*metapb.Store, error)
	GlobalCheckpoint(ctx context.Context, task string) (uint64, error)
}

// healthReporter takes what a capture finds wrong with PD, etcd or the
// task (nil: fine again); the agent's /healthz and Status show it.
type healthReporter interface {
	setPDErr(err error)
	setEtcdErr(err error)
	setLastErr(err error)
}

// taskView is the capture's task: its name, start ts and ranges, and the
// flushed progress that outlives one capture (a runner's).
type taskView interface {
	taskName() string
	startTS() uint64
	taskRanges() []keyspace.Range
	flushedMin(start, end []byte) uint64
	recordFlushed(spans []span)
	setMaxLag(v float64)
}

// agentCluster is the agent's PD, etcd and TiKV connections as a
// clusterAPI.
type agentCluster struct{ a *Agent }

func (c agentCluster) EventFeed(ctx context.Context) (cdcpb.ChangeData_EventFeedClient, error) {
	return c.a.cdc.EventFeed(ctx)
}

func (c agentCluster) ScanRegions(ctx context.Context, key, endKey []byte, limit int) ([]*router.Region, error) {
	return c.a.pd.ScanRegions(ctx, key, endKey, limit)
}

func (c agentCluster) GetStore(ctx context.Context, storeID uint64) (*metapb.Store, error) {
	return c.a.pd.GetStore(ctx, storeID)
}

func (c agentCluster) GlobalCheckpoint(ctx context.Context, name string) (uint64, error) {
	return task.Checkpoint(ctx, c.a.etcd, name)
}

func (c *capture) run(ctx context.Context) error {
	defer close(c.stopped)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.streamLoop(ctx) })
	g.Go(func() error { return c.regionLoop(ctx) })
	g.Go(func() error { return c.flushLoop(ctx) })
	g.Go(func() error { return c.probeLoop(ctx) })
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (c *capture) kickRegions() { signal(c.kick) }

func (c *capture) wakeRegions() { signal(c.wake) }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// feed is one EventFeed stream. Send is serialised; Recv belongs to
// streamLoop.
type feed struct {
	mu     sync.Mutex
	stream cdcpb.ChangeData_EventFeedClient
	broken bool
}

func (f *feed) send(req *cdcpb.ChangeDataRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return errors.New("stream closed")
	}
	if err := f.stream.Send(req); err != nil {
		f.broken = true
		return err
	}
	return nil
}

// streamLoop keeps one EventFeed stream open and reads it. A broken stream
// ends every subscription on it; its regions go idle and are subscribed
// again on the next stream. Rows already received stay in the buffer.
func (c *capture) streamLoop(ctx context.Context) error {
	bo := newBackoff(100*time.Millisecond, 5*time.Second)
	reopened := false
	for ctx.Err() == nil {
		c.readVersion(ctx)
		sctx, cancel := context.WithCancel(ctx)
		stream, err := c.cl.EventFeed(sctx)
		if err == nil {
			f := &feed{stream: stream}
			c.mu.Lock()
			c.feed, c.feedErr = f, ""
			c.mu.Unlock()
			if reopened {
				c.wakeRegions() // nothing changed in PD: subscribe the regions again
			} else {
				c.kickRegions()
			}
			err = c.recv(ctx, f, bo)
			f.mu.Lock()
			f.broken = true
			f.mu.Unlock()
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		var fatal *fatalError
		if errors.As(err, &fatal) {
			return err
		}
		reopened = errors.Is(err, errReopen)
		if reopened {
			// Closing the stream released the regions on TiKV; the others
			// are subscribed again on the next one from their checkpoints.
			c.endStream(err.Error(), false)
			continue
		}
		c.streamBroken(err)
		bo.wait(ctx)
	}
	return nil
}

// errReopen ends a stream on purpose: below TiKV 7.3 it is the only way to
// stop a region's subscription.
var errReopen = errors.New("stream reopened to release regions")

// readVersion reads the local TiKV's version from PD before a stream
// opens (a rolling upgrade changes it). When PD cannot say, the last known
// answer stands (at first: no Deregister, the safe choice).
func (c *capture) readVersion(ctx context.Context) {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.cl.GetStore(gctx, c.cfg.StoreID)
	if err != nil || st == nil {
		if ctx.Err() == nil {
			c.log.Debug("read the store's version from PD", "error", err)
		}
		return
	}
	ok := hasDeregister(st.GetVersion())
	c.mu.Lock()
	if ok != c.deregister {
		c.log.Info("tikv version", "version", st.GetVersion(), "deregister", ok)
	}
	c.deregister = ok
	c.mu.Unlock()
}

// hasDeregister reports whether a TiKV version has EventFeed Deregister
// (tikv PR #14923, v7.3.0). An unparseable version counts as old.
func hasDeregister(version string) bool {
	v := strings.TrimPrefix(strings.TrimSpace(version), "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return major > 7 || (major == 7 && minor >= 3)
}

// fatalError ends the capture (the runner starts a fresh one).
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func (c *capture) streamBroken(err error) {
	if errors.Is(err, io.EOF) {
		err = errors.New("stream ended by tikv")
	}
	c.log.Warn("change stream broken; subscribing again", "error", err)
	c.met.streamErrors.Inc()
	c.endStream("stream broken: "+err.Error(), true)
}

// endStream ends every subscription of the stream; down: the stream is
// down until the next one opens (reported as such).
func (c *capture) endStream(reason string, down bool) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.feed = nil
	c.feedErr = ""
	if down {
		c.feedErr = strings.TrimPrefix(reason, "stream broken: ")
	}
	c.reopen = false
	for id, r := range c.subs {
		delete(c.subs, id)
		c.idleLocked(r, reason, now, 0)
	}
	for _, r := range c.regions {
		if r.state == stateStopping {
			c.idleLocked(r, r.reason, now, 0)
		}
	}
}

// idleLocked ends a region's subscription state. Rows it produced stay in
// the buffer; its pending prewrites are dropped (the next incremental scan
// sends the locks again).
func (c *capture) idleLocked(r *region, reason string, now time.Time, delay time.Duration) {
	r.setState(stateIdle, now)
	r.m.release()
	r.m = nil
	r.requestID = 0
	r.reason = reason
	r.retryAt = now.Add(delay)
}

// recv reads the stream until it fails. Rows are handed to the flusher
// before the next message is read. A resolved ts is applied only after
// every row received before it was added, so a flush cut never claims a ts
// whose rows are not buffered.
//
// The reader never stops for long: TiKV's sink quota is store-wide and an
// overflow stops the region for every subscriber, TiCDC included
// (TIKV-PROTOCOLS.md §8.4). When the flusher is full past BlockedGrace,
// the regions whose rows do not fit are released (their rows dropped, the
// subscription ended with Deregister, or a new stream below TiKV 7.3) and
// nothing is subscribed until a probe Add of the dropped rows succeeds;
// then they are subscribed again from their checkpoints, whose
// incremental scans send the dropped rows again.
func (c *capture) recv(ctx context.Context, f *feed, bo *backoff) error {
	var rows []logfile.Row
	for {
		ev, err := f.stream.Recv()
		if err != nil {
			return err
		}
		bo.reset()
		if len(ev.Events) > 0 {
			var from []*region
			rows, from = c.handleEvents(f, ev.Events, rows[:0])
			if len(rows) > 0 {
				batch := make([]logfile.Row, len(rows)) // the flusher keeps it
				copy(batch, rows)
				if err := c.add(ctx, f, batch, from); err != nil {
					return err
				}
			}
		}
		if rts := ev.ResolvedTs; rts != nil {
			c.met.events[evResolved].Inc()
			c.handleResolved(rts)
		}
		c.mu.Lock()
		reopen := c.reopen && c.feed == f
		c.mu.Unlock()
		if reopen {
			return errReopen
		}
	}
}

// add hands a batch to the flusher: waiting at most BlockedGrace, and not
// at all while the capture is blocked. Rows that do not fit release the
// regions they came from.
func (c *capture) add(ctx context.Context, f *feed, batch []logfile.Row, from []*region) error {
	c.mu.Lock()
	blocked := c.blocked
	c.mu.Unlock()
	actx, cancel := context.WithTimeout(ctx, c.cfg.BlockedGrace)
	if blocked {
		cancel() // try without waiting
	}
	err := c.fl.Add(actx, batch)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			return &fatalError{fmt.Errorf("buffer rows: %w", err)}
		}
		c.releaseFull(f, batch, from)
		return nil
	}
	var n int64
	for i := range batch {
		n += batch[i].LogicalSize()
	}
	c.met.capturedRows.Add(float64(len(batch)))
	c.met.capturedBytes.Add(float64(n))
	if c.fl.CutDue() {
		signal(c.full)
	}
	return nil
}

// releaseFull releases the regions of a batch the full flusher did not
// take, blocks new subscriptions, and hands the batch to the probe.
func (c *capture) releaseFull(f *feed, batch []logfile.Row, from []*region) {
	now := time.Now()
	var reqs []*cdcpb.ChangeDataRequest
	c.mu.Lock()
	if !c.blocked {
		c.log.Warn("flusher full; releasing the regions whose rows wait until there is room", "grace", c.cfg.BlockedGrace)
		c.blocked = true
	}
	for _, r := range from {
		if c.feed != f || c.subs[r.requestID] != r || (r.state != statePending && r.state != stateNormal) {
			continue
		}
		if req := c.releaseLocked(r, "released while the flusher is full", now); req != nil {
			reqs = append(reqs, req)
		}
	}
	c.mu.Unlock()
	select {
	case c.probe <- batch:
	default: // a probe is pending already
	}
	for _, req := range reqs {
		if err := f.send(req); err != nil {
			c.log.Debug("send deregister", "error", err)
		}
	}
}

// releaseLocked ends a healthy subscription on the agent's own account.
// With Deregister (TiKV ≥ 7.3) it returns the request and the region waits
// in stopping for TiKV's answer; below 7.3 the region goes idle at once
// and the stream is reopened (every request there is a Register, so a
// Deregister would only get DuplicateRequest and leave the subscription).
func (c *capture) releaseLocked(r *region, reason string, now time.Time) *cdcpb.ChangeDataRequest {
	if c.deregister {
		return c.stopLocked(r, reason, now)
	}
	delete(c.subs, r.requestID)
	c.idleLocked(r, reason, now, retryDelay(r.failures))
	c.reopen = true
	return nil
}

// probeLoop adds rows the full flusher refused; once one such Add
// succeeds there is room again and the released regions are subscribed
// again.
func (c *capture) probeLoop(ctx context.Context) error {
	for {
		var rows []logfile.Row
		select {
		case <-ctx.Done():
			return nil
		case rows = <-c.probe:
		}
		if err := c.fl.Add(ctx, rows); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return &fatalError{fmt.Errorf("buffer rows: %w", err)}
		}
		c.mu.Lock()
		c.blocked = false
		c.mu.Unlock()
		c.log.Info("flusher has room again; subscribing the released regions")
		c.wakeRegions()
	}
}

// handleEvents runs the rows of a message through their regions' matchers
// and applies errors. It returns the committed changes and the regions
// they came from.
func (c *capture) handleEvents(f *feed, events []*cdcpb.Event, out []logfile.Row) ([]logfile.Row, []*region) {
	now := time.Now()
	var deregister []*cdcpb.ChangeDataRequest
	var from []*region
	rescan, resubscribe := false, false
	c.mu.Lock()
	for _, ev := range events {
		r := c.subs[ev.RequestId]
		if r == nil || r.id != ev.RegionId || c.feed != f {
			continue // a subscription that already ended
		}
		switch e := ev.Event.(type) {
		case *cdcpb.Event_Entries_:
			for _, row := range e.Entries.GetEntries() {
				c.met.countRow(row)
				if r.state != statePending && r.state != stateNormal {
					continue
				}
				var err error
				n := len(out)
				out, err = r.m.handle(row, out)
				if err != nil {
					c.log.Error("protocol error; subscribing the region again", "region", r.id, "error", err)
					c.met.protocolErrors.Inc()
					if req := c.releaseLocked(r, "protocol error: "+err.Error(), now); req != nil {
						deregister = append(deregister, req)
					}
					break
				}
				if len(out) > n && (len(from) == 0 || from[len(from)-1] != r) {
					from = append(from, r)
				}
				if row.Type == cdcpb.Event_INITIALIZED && r.state == statePending {
					r.setState(stateNormal, now)
					r.busy, r.failures = 0, 0
					if n := r.m.droppedCommits; n > 0 {
						c.log.Warn("unmatched commits dropped at initialized", "region", r.id, "count", n)
						c.met.droppedCommits.Add(float64(n))
					}
				}
				if row.Type == cdcpb.Event_PREWRITE {
					deregister = append(deregister, c.enforcePrewriteBudgetLocked(now)...)
				}
			}
			if r.m != nil && r.m.lateRows > 0 {
				c.log.Error("rows at or below the resolved ts", "region", r.id, "count", r.m.lateRows)
				c.met.protocolErrors.Add(float64(r.m.lateRows))
				r.m.lateRows = 0
			}
		case *cdcpb.Event_Error:
			c.met.events[evError].Inc()
			delete(c.subs, ev.RequestId)
			if r.state == stateStopping && e.Error.RegionNotFound != nil {
				// TiKV's answer to our Deregister: nothing changed. A
				// region stopped again and again (the prewrite budget
				// counts its releases in failures) waits longer each time.
				c.idleLocked(r, r.reason, now, retryDelay(r.failures))
				resubscribe = true
				break
			}
			reason, delay, fatal := c.classify(r, e.Error)
			c.met.resubscribes.WithLabelValues(errorKind(e.Error)).Inc()
			c.idleLocked(r, reason, now, delay)
			switch {
			case fatal != nil:
				c.log.Error("subscription refused", "region", r.id, "error", fatal)
				c.health.setLastErr(fmt.Errorf("task %s: %w", c.task.taskName(), fatal))
			case e.Error.DuplicateRequest != nil && !c.deregister:
				// TiKV < 7.3 still holds a subscription of the region on
				// this stream; only a new stream ends it.
				c.log.Warn("DuplicateRequest; reopening the stream", "region", r.id)
				c.reopen = true
			default:
				c.log.Debug("subscription ended", "region", r.id, "reason", reason)
			}
			if e.Error.NotLeader != nil || e.Error.EpochNotMatch != nil || e.Error.RegionNotFound != nil {
				rescan = true // the region moved, split or merged: ask PD
			} else {
				resubscribe = true
			}
		case *cdcpb.Event_ResolvedTs:
			if r.state == stateNormal {
				r.m.resolve(e.ResolvedTs)
			}
		}
	}
	c.mu.Unlock()
	for _, req := range deregister {
		if err := f.send(req); err != nil {
			c.log.Debug("send deregister", "error", err)
		}
	}
	if rescan {
		c.kickRegions()
	} else if resubscribe {
		c.wakeRegions()
	}
	return out, from
}

// retryDelay is the wait before subscribing a region again after its n-th
// failure since it last initialized: none after the first, then 100 ms
// doubling up to 5 s.
func retryDelay(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(100*time.Millisecond<<min(n-2, 6), 5*time.Second)
}

// classify maps a subscription error to a reason, a retry delay and, for
// errors retrying cannot fix, an error to report.
func (c *capture) classify(r *region, e *cdcpb.Error) (string, time.Duration, error) {
	// The first re-subscription is immediate; if PD still has the old
	// picture and the region fails again before it initializes, wait a
	// little longer each time.
	r.failures++
	again := retryDelay(r.failures)
	switch {
	case e.NotLeader != nil:
		return "resubscribing after NotLeader", again, nil
	case e.EpochNotMatch != nil:
		return "resubscribing after EpochNotMatch", again, nil
	case e.RegionNotFound != nil:
		return "resubscribing after RegionNotFound", again, nil
	case e.ServerIsBusy != nil, e.Congested != nil:
		r.busy++
		d := min(time.Duration(r.busy)*500*time.Millisecond, 10*time.Second)
		what := "ServerIsBusy"
		if e.Congested != nil {
			what = "Congested"
		}
		return fmt.Sprintf("tikv %s, retrying in %s", what, d), d, nil
	case e.DuplicateRequest != nil:
		return "resubscribing after DuplicateRequest", time.Second, nil
	case e.ClusterIdMismatch != nil:
		err := fmt.Errorf("tikv %s belongs to cluster %d, PD to %d", c.cfg.TiKVAddr, e.ClusterIdMismatch.Current, e.ClusterIdMismatch.Request)
		return err.Error(), 30 * time.Second, err
	case e.Compatibility != nil:
		err := fmt.Errorf("tikv %s requires version %s", c.cfg.TiKVAddr, e.Compatibility.RequiredVersion)
		return err.Error(), 30 * time.Second, err
	}
	return "resubscribing after an unknown error", time.Second, nil
}

func errorKind(e *cdcpb.Error) string {
	switch {
	case e.NotLeader != nil:
		return "not_leader"
	case e.EpochNotMatch != nil:
		return "epoch_not_match"
	case e.RegionNotFound != nil:
		return "region_not_found"
	case e.ServerIsBusy != nil:
		return "server_is_busy"
	case e.Congested != nil:
		return "congested"
	case e.DuplicateRequest != nil:
		return "duplicate_request"
	case e.ClusterIdMismatch != nil:
		return "cluster_id_mismatch"
	case e.Compatibility != nil:
		return "compatibility"
	}
	return "other"
}

// handleResolved applies a store-level ResolvedTs: every listed region (of
// this stream) is resolved to at least ts. Only initialized subscriptions
// take it; one region has at most one subscription on a stream at a time,
// so the region id names it.
func (c *capture) handleResolved(rts *cdcpb.ResolvedTs) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range rts.Regions {
		r := c.regions[id]
		if r == nil || r.state != stateNormal {
			continue
		}
		if rts.RequestId != 0 && rts.RequestId != r.requestID {
			continue
		}
		r.m.resolve(rts.Ts)
	}
}

// stopLocked deregisters a region's subscription; it goes idle when TiKV
// confirms (RegionNotFound for the request).
func (c *capture) stopLocked(r *region, reason string, now time.Time) *cdcpb.ChangeDataRequest {
	r.setState(stateStopping, now)
	r.reason = reason
	return &cdcpb.ChangeDataRequest{
		Header:    c.header(),
		RegionId:  r.id,
		RequestId: r.requestID,
		Request:   &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}},
	}
}

func (c *capture) header() *cdcpb.Header {
	return &cdcpb.Header{ClusterId: c.cfg.ClusterID, TicdcVersion: ticdcVersion}
}

// minScanGap spaces PD scans that change signals ask for.
const minScanGap = 100 * time.Millisecond

// regionLoop re-reads the task's regions from PD every RegionInterval and
// on change signals (kick: NotLeader, EpochNotMatch, RegionNotFound, a
// broken stream), retrying a failed scan sooner; in between it subscribes
// idle regions when they are due (wake, or the earliest retry time)
// without asking PD.
func (c *capture) regionLoop(ctx context.Context) error {
	scanT := time.NewTimer(0)
	retryT := time.NewTimer(time.Hour)
	defer scanT.Stop()
	defer retryT.Stop()
	bo := newBackoff(500*time.Millisecond, c.cfg.RegionInterval)
	var lastScan time.Time
	for {
		scan := false
		select {
		case <-ctx.Done():
			return nil
		case <-scanT.C:
			scan = true
		case <-c.kick:
			scan = true
		case <-c.wake:
		case <-retryT.C:
		}
		if scan {
			if gap := time.Until(lastScan.Add(minScanGap)); gap > 0 {
				t := time.NewTimer(gap)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil
				case <-t.C:
				}
			}
			lastScan = time.Now()
		}
		err := c.reconcile(ctx, scan)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("read regions from PD", "error", err)
		}
		if scan {
			next := c.cfg.RegionInterval
			if err != nil {
				next = min(bo.cur, next)
				bo.cur = min(bo.cur*2, bo.max)
			} else {
				bo.reset()
			}
			resetTimer(scanT, next)
		}
		if err != nil && ctx.Err() == nil {
			resetTimer(retryT, time.Second) // due regions: try again soon
		} else if d, ok := c.nextRetry(); ok {
			resetTimer(retryT, d)
		}
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(max(d, 0))
}

// nextRetry is the wait until the earliest idle region that is not due
// yet becomes due (due ones were just tried). None while blocked or
// without a stream: room and a new stream wake the loop.
func (c *capture) nextRetry() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.blocked || c.feed == nil {
		return 0, false
	}
	now := time.Now()
	var first time.Time
	for _, r := range c.regions {
		if r.state == stateIdle && r.retryAt.After(now) && (first.IsZero() || r.retryAt.Before(first)) {
			first = r.retryAt
		}
	}
	if first.IsZero() {
		return 0, false
	}
	return time.Until(first) + time.Millisecond, true
}

// scanRegions lists the regions inside the task ranges whose leader is on
// this store, clipped to the ranges.
func (c *capture) scanRegions(ctx context.Context) ([]*pdRegion, error) {
	const page = 1024
	var out []*pdRegion
	for _, kr := range c.task.taskRanges() {
		enc := kr.Encode()
		key := enc.Start
		for {
			rs, err := c.cl.ScanRegions(ctx, key, enc.End, page)
			if err != nil {
				c.health.setPDErr(fmt.Errorf("pd: scan regions: %w", err))
				return nil, fmt.Errorf("scan regions: %w", err)
			}
			if len(rs) == 0 {
				return nil, fmt.Errorf("scan regions from %x: PD returned none", key)
			}
			for _, pr := range rs {
				meta := pr.Meta
				if pr.Leader == nil || pr.Leader.GetStoreId() != c.cfg.StoreID {
					continue
				}
				clipped, ok := keyspace.Range{Start: meta.GetStartKey(), End: meta.GetEndKey()}.Intersect(enc)
				if !ok {
					continue
				}
				// A boundary that is not exactly one encoded key has no exact
				// raw key: the region is left out (its range stays uncovered
				// and pins the checkpoint) rather than claimed with a guess.
				raw, err := keyspace.DecodeRange(clipped)
				if err != nil {
					c.log.Warn("region left out: its boundary is not a raw key", "region", meta.GetId(), "error", err)
					continue
				}
				out = append(out, &pdRegion{
					id: meta.GetId(), epoch: metapb.RegionEpoch{Version: meta.GetRegionEpoch().GetVersion(), ConfVer: meta.GetRegionEpoch().GetConfVer()},
					start: raw.Start, end: raw.End, encStart: clipped.Start, encEnd: clipped.End,
				})
			}
			last := rs[len(rs)-1].Meta.GetEndKey()
			if len(last) == 0 || !keyspace.BeforeEnd(last, enc.End) {
				break
			}
			key = last
		}
	}
	c.health.setPDErr(nil)
	return out, nil
}

// reconcile subscribes the regions led here that are due. With scan it
// first re-reads PD: new regions led here are added, idle ones PD no
// longer shows here are dropped. PD alone never ends a subscription: a
// region PD shows elsewhere, changed, or without a leader (after a PD
// restart, until the leaders heartbeat) stays subscribed; TiKV reports
// NotLeader, EpochNotMatch or RegionNotFound itself when it must end.
func (c *capture) reconcile(ctx context.Context, scan bool) error {
	var found []*pdRegion
	if scan {
		var err error
		if found, err = c.scanRegions(ctx); err != nil {
			return err
		}
	}
	now := time.Now()
	c.mu.Lock()
	f := c.feed
	if f == nil || c.blocked {
		c.mu.Unlock()
		return nil
	}
	var todo []*region
	if scan {
		seen := make(map[uint64]bool, len(found))
		var idx []*region // regions by start key, built when first needed
		for _, p := range found {
			seen[p.id] = true
			r := c.regions[p.id]
			if r != nil && (r.sameAs(p) || r.state != stateIdle) {
				// Subscribed: TiKV's error is due if the region changed.
				continue
			}
			if r != nil {
				delete(c.regions, p.id)
			}
			if idx == nil {
				idx = c.sortedRegionsLocked()
			}
			if c.overlapsActiveLocked(idx, p) {
				continue // an old region's subscription still covers part of it
			}
			r = &region{id: p.id, epoch: p.epoch, start: p.start, end: p.end, encStart: p.encStart, encEnd: p.encEnd, since: now}
			c.regions[p.id] = r
		}
		for id, r := range c.regions {
			if !seen[id] && r.state == stateIdle {
				delete(c.regions, id)
			}
		}
	}
	for _, r := range c.regions {
		if r.state == stateIdle && !now.Before(r.retryAt) {
			todo = append(todo, r)
		}
	}
	c.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	global, err := c.cl.GlobalCheckpoint(ctx, c.task.taskName())
	if err != nil {
		c.health.setEtcdErr(err)
		return fmt.Errorf("read global checkpoint: %w", err)
	}
	floor := max(global, c.task.startTS())
	var reqs []*cdcpb.ChangeDataRequest
	c.mu.Lock()
	if c.feed == f && !c.blocked {
		for _, r := range todo {
			if r.state != stateIdle || c.regions[r.id] != r {
				continue
			}
			reqs = append(reqs, c.subscribeLocked(r, floor, now))
		}
	}
	c.mu.Unlock()
	for _, req := range reqs {
		if err := f.send(req); err != nil {
			return nil // the stream broke; streamLoop starts over
		}
	}
	return nil
}

// overlapsActiveLocked reports whether p overlaps a subscribed region of
// another id; idle regions it overlaps are stale and dropped. idx holds the
// regions by start key (they are disjoint, so their ends are sorted too).
func (c *capture) overlapsActiveLocked(idx []*region, p *pdRegion) bool {
	i := sort.Search(len(idx), func(i int) bool { return keyspace.BeforeEnd(p.start, idx[i].end) })
	active := false
	for ; i < len(idx) && keyspace.BeforeEnd(idx[i].start, p.end); i++ {
		o := idx[i]
		if o.id == p.id || c.regions[o.id] != o {
			continue
		}
		if o.state == stateIdle {
			delete(c.regions, o.id)
			continue
		}
		active = true
	}
	return active
}

// subscribeLocked registers a region. Its checkpoint_ts is the highest ts
// storage is known to hold for exactly its range: the global checkpoint (or
// the task's start_ts), raised to what this agent itself flushed for the
// range (its earlier subscriptions, or the region it was split from). The
// incremental scan then sends everything committed after it, so coverage
// (from, resolved] stays honest; rows already buffered come again, which
// is fine (duplicates are allowed, I5).
func (c *capture) subscribeLocked(r *region, floor uint64, now time.Time) *cdcpb.ChangeDataRequest {
	cp := max(floor, r.from, c.task.flushedMin(r.start, r.end))
	c.nextReqID++
	r.requestID = c.nextReqID
	r.from = cp
	r.m = c.newMatcherLocked(r, cp)
	r.reason = ""
	r.setState(statePending, now)
	c.subs[r.requestID] = r
	c.met.subscribes.Inc()
	return &cdcpb.ChangeDataRequest{
		Header:       c.header(),
		RegionId:     r.id,
		RegionEpoch:  &metapb.RegionEpoch{Version: r.epoch.Version, ConfVer: r.epoch.ConfVer},
		CheckpointTs: cp,
		StartKey:     r.encStart,
		EndKey:       r.encEnd,
		RequestId:    r.requestID,
		ExtraOp:      kvrpcpb.ExtraOp_ReadOldValue,
		Request:      &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	}
}

// sortedRegions returns the regions by start key; c.mu is held.
func (c *capture) sortedRegionsLocked() []*region {
	out := make([]*region, 0, len(c.regions))
	for _, r := range c.regions {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].start, out[j].start) < 0 })
	return out
}
