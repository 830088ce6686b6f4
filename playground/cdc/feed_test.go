package cdc_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/pitr-io/pitr/playground/cluster"
)

// The client side of the conformance suite: a feed is one EventFeed stream
// whose every received message is checked against the protocol rules that
// hold at all times (batching limits, nothing for a subscription after its
// error, no ResolvedTs before INITIALIZED, no commit at or below a resolved
// ts already received).

const waitTimeout = 30 * time.Second

type subID struct{ req, region uint64 }

type feed struct {
	t            *testing.T
	cancel       context.CancelFunc
	stream       grpc.ClientStream
	send         func(*cdcpb.ChangeDataRequest) error
	multiplexing bool
	clusterID    uint64
	version      string

	ch    chan *cdcpb.ChangeDataEvent
	errCh chan error
	// gate, when non-nil, holds the receive loop until closed: the
	// consumer stops reading and the server's send window fills.
	gateMu sync.Mutex
	gate   chan struct{}

	// protocol state, touched only by the test goroutine (in next)
	initialized map[subID]bool
	failed      map[subID]bool
	resolved    map[subID]uint64 // per (request_id or 0, region)
	registered  map[subID]bool
	// logs is what each subscription received and the test did not take
	// yet.
	logs map[subID]*subLog
	// maxEvents is the most Events seen in one message.
	maxEvents int
}

type feedOpts struct {
	version   string // header.ticdc_version of the first request
	clusterID uint64
	v2        bool
	features  string
	// smallWindow disables gRPC's dynamic flow-control window so that a
	// consumer that stops reading blocks the server within 64 KiB.
	smallWindow bool
}

func dialStore(t *testing.T, addr string, small bool) *grpc.ClientConn {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
	}
	if small {
		opts = append(opts, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	}
	cc, err := grpc.NewClient(addr, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	return cc
}

func openFeed(t *testing.T, addr string, o feedOpts) *feed {
	t.Helper()
	cc := dialStore(t, addr, o.smallWindow)
	ctx, cancel := context.WithCancel(context.Background())
	f := &feed{
		t: t, cancel: cancel, clusterID: o.clusterID, version: o.version,
		ch: make(chan *cdcpb.ChangeDataEvent), errCh: make(chan error, 1),
		initialized: map[subID]bool{}, failed: map[subID]bool{}, resolved: map[subID]uint64{}, registered: map[subID]bool{},
		logs: map[subID]*subLog{},
	}
	client := cdcpb.NewChangeDataClient(cc)
	var recv func() (*cdcpb.ChangeDataEvent, error)
	if o.v2 {
		if o.features != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "features", o.features)
		}
		s, err := client.EventFeedV2(ctx)
		require.NoError(t, err)
		f.stream, f.send, recv = s, s.Send, s.Recv
		f.multiplexing = o.features == "stream-multiplexing"
	} else {
		s, err := client.EventFeed(ctx)
		require.NoError(t, err)
		f.stream, f.send, recv = s, s.Send, s.Recv
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			f.gateMu.Lock()
			g := f.gate
			f.gateMu.Unlock()
			if g != nil {
				select {
				case <-g:
				case <-ctx.Done():
					return
				}
			}
			ev, err := recv()
			if err != nil {
				f.errCh <- err
				return
			}
			select {
			case f.ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return f
}

// pause stops the receive loop before its next Recv; resume lets it go on.
func (f *feed) pause() {
	f.gateMu.Lock()
	f.gate = make(chan struct{})
	f.gateMu.Unlock()
}

func (f *feed) resume() {
	f.gateMu.Lock()
	if f.gate != nil {
		close(f.gate)
		f.gate = nil
	}
	f.gateMu.Unlock()
}

func (f *feed) header() *cdcpb.Header {
	return &cdcpb.Header{ClusterId: f.clusterID, TicdcVersion: f.version}
}

// registerReq builds a Register for the region's full range.
func (f *feed) registerReq(r *cluster.Region, reqID, checkpoint uint64) *cdcpb.ChangeDataRequest {
	ep := r.Epoch
	return &cdcpb.ChangeDataRequest{
		Header:       f.header(),
		RegionId:     r.ID,
		RegionEpoch:  &ep,
		CheckpointTs: checkpoint,
		StartKey:     r.StartKey,
		EndKey:       r.EndKey,
		RequestId:    reqID,
		ExtraOp:      1, // ReadOldValue, as TiCDC sends
		Request:      &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}},
	}
}

func (f *feed) sendReq(req *cdcpb.ChangeDataRequest) {
	f.t.Helper()
	if req.GetRegister() != nil || req.Request == nil {
		k := subID{req.RequestId, req.RegionId}
		f.registered[k] = true
		delete(f.failed, k)
		delete(f.initialized, k)
		delete(f.resolved, k)
		delete(f.resolved, subID{0, req.RegionId})
	}
	require.NoError(f.t, f.send(req))
}

func (f *feed) register(r *cluster.Region, reqID, checkpoint uint64) {
	f.t.Helper()
	f.sendReq(f.registerReq(r, reqID, checkpoint))
}

// next returns the next message after checking it against the invariants.
func (f *feed) next() *cdcpb.ChangeDataEvent {
	f.t.Helper()
	select {
	case ev := <-f.ch:
		f.check(ev)
		f.record(ev)
		return ev
	case err := <-f.errCh:
		f.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitTimeout):
		f.t.Fatalf("no event within %v", waitTimeout)
	}
	return nil
}

// streamErr waits for the stream to end and returns its error.
func (f *feed) streamErr() error {
	f.t.Helper()
	for {
		select {
		case ev := <-f.ch:
			f.check(ev)
			f.record(ev)
		case err := <-f.errCh:
			return err
		case <-time.After(waitTimeout):
			f.t.Fatalf("stream did not end within %v", waitTimeout)
		}
	}
}

func rowsBytes(rows []*cdcpb.Event_Row) int {
	n := 0
	for _, r := range rows {
		n += len(r.Key) + len(r.Value) + len(r.OldValue)
	}
	return n
}

func (f *feed) check(ev *cdcpb.ChangeDataEvent) {
	t := f.t
	t.Helper()
	require.False(t, len(ev.Events) > 0 && ev.ResolvedTs != nil, "events and resolved_ts in one message")
	require.LessOrEqual(t, len(ev.Events), 64, "more than 64 events in one message")
	f.maxEvents = max(f.maxEvents, len(ev.Events))
	require.LessOrEqual(t, ev.Size(), 6<<20+64<<10, "message larger than 6 MiB")
	if rts := ev.ResolvedTs; rts != nil {
		require.NotEmpty(t, rts.Regions)
		for _, region := range rts.Regions {
			k := subID{rts.RequestId, region}
			if !f.multiplexing {
				require.Zero(t, rts.RequestId, "batched resolved ts without multiplexing carries request_id 0")
				require.True(t, f.anyInitialized(region), "ResolvedTs for region %d before INITIALIZED", region)
			} else {
				require.True(t, f.initialized[k], "ResolvedTs for %v before INITIALIZED", k)
			}
			if rts.Ts > f.resolved[k] {
				f.resolved[k] = rts.Ts
			}
		}
	}
	for _, e := range ev.Events {
		k := subID{e.RequestId, e.RegionId}
		require.False(t, f.failed[k], "event for %v after its error: %v", k, e)
		switch x := e.Event.(type) {
		case *cdcpb.Event_Error:
			f.failed[k] = true
		case *cdcpb.Event_ResolvedTs:
			require.True(t, f.initialized[k], "per-region resolved ts for %v before INITIALIZED", k)
			if x.ResolvedTs > f.resolved[k] {
				f.resolved[k] = x.ResolvedTs
			}
		case *cdcpb.Event_Entries_:
			rows := x.Entries.GetEntries()
			require.NotEmpty(t, rows)
			if len(rows) > 1 {
				require.Less(t, rowsBytes(rows), 32*1024, "entries of 32 KiB or more")
			}
			for _, r := range rows {
				require.False(t, f.initialized[k] && r.Type == cdcpb.Event_INITIALIZED, "second INITIALIZED for %v", k)
				if r.Type == cdcpb.Event_INITIALIZED {
					f.initialized[k] = true
				}
				if r.Type == cdcpb.Event_COMMIT || r.Type == cdcpb.Event_COMMITTED {
					for _, rk := range []subID{k, {0, e.RegionId}} {
						if rts := f.resolved[rk]; rts > 0 {
							require.Greater(t, r.CommitTs, rts, "commit %x@%d of region %d at or below resolved ts %d", r.Key, r.CommitTs, e.RegionId, rts)
						}
					}
				}
			}
		default:
			t.Fatalf("unexpected event kind %T", e.Event)
		}
	}
}

func (f *feed) anyInitialized(region uint64) bool {
	for k, ok := range f.initialized {
		if ok && k.region == region {
			return true
		}
	}
	return false
}

// subLog is what one subscription received, in order.
type subLog struct {
	rows     []*cdcpb.Event_Row
	err      *cdcpb.Error
	resolved []uint64
}

// until reads messages until stop returns true (checked first, then after
// every message).
func (f *feed) until(stop func() bool) {
	f.t.Helper()
	for !stop() {
		f.next()
	}
}

func (f *feed) log(k subID) *subLog {
	l := f.logs[k]
	if l == nil {
		l = &subLog{}
		f.logs[k] = l
	}
	return l
}

// take returns and forgets what the subscription received so far.
func (f *feed) take(k subID) *subLog {
	l := f.log(k)
	delete(f.logs, k)
	return l
}

func (f *feed) record(ev *cdcpb.ChangeDataEvent) {
	if rts := ev.ResolvedTs; rts != nil {
		for _, region := range rts.Regions {
			l := f.log(subID{rts.RequestId, region})
			l.resolved = append(l.resolved, rts.Ts)
		}
	}
	for _, e := range ev.Events {
		l := f.log(subID{e.RequestId, e.RegionId})
		switch x := e.Event.(type) {
		case *cdcpb.Event_Error:
			l.err = x.Error
		case *cdcpb.Event_ResolvedTs:
			l.resolved = append(l.resolved, x.ResolvedTs)
		case *cdcpb.Event_Entries_:
			l.rows = append(l.rows, x.Entries.Entries...)
		}
	}
}

// initializedRows reads until the subscription's INITIALIZED and takes the
// rows before it.
func (f *feed) initializedRows(k subID) []*cdcpb.Event_Row {
	f.t.Helper()
	f.until(func() bool {
		require.Nil(f.t, f.log(k).err, "error for %v", k)
		return f.initialized[k]
	})
	rows := f.take(k).rows
	require.Equal(f.t, cdcpb.Event_INITIALIZED, rows[len(rows)-1].Type)
	return rows[:len(rows)-1]
}

// errorOf reads until the subscription's error and takes it with the rows
// before it.
func (f *feed) errorOf(k subID) (*cdcpb.Error, []*cdcpb.Event_Row) {
	f.t.Helper()
	f.until(func() bool { return f.log(k).err != nil })
	l := f.take(k)
	return l.err, l.rows
}

// nextRows reads until the subscription got n rows and takes them.
func (f *feed) nextRows(k subID, n int) []*cdcpb.Event_Row {
	f.t.Helper()
	f.until(func() bool {
		require.Nil(f.t, f.log(k).err)
		return len(f.log(k).rows) >= n
	})
	return f.take(k).rows
}
