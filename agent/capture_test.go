package agent

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// fakeSink is a flusher that records what it gets. Add blocks while gate
// is non-nil and open.
type fakeSink struct {
	mu      sync.Mutex
	rows    []logfile.Row
	flushes [][]*pitrpb.RegionCoverage
	gate    chan struct{}
	fail    error
}

func (s *fakeSink) Add(ctx context.Context, rows []logfile.Row) error {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows = append(s.rows, rows...)
	return nil
}

func (s *fakeSink) Buffered() int64 { return 0 }

func (s *fakeSink) Flush(_ context.Context, ts uint64, regions []*pitrpb.RegionCoverage) (*pitrpb.Meta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, s.fail
	}
	s.flushes = append(s.flushes, regions)
	return &pitrpb.Meta{FlushTs: ts}, nil
}

func (s *fakeSink) Stats() flush.Stats { return flush.Stats{} }

func (s *fakeSink) CutDue() bool { return false }

func (s *fakeSink) keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.rows {
		out = append(out, string(r.Key))
	}
	return out
}

// fakeStream is an EventFeed client stream fed by the test. Recv takes
// messages from an unbuffered channel: once the test's send of message n+1
// returns, message n has been handled completely.
type fakeStream struct {
	grpc.ClientStream
	in   chan *cdcpb.ChangeDataEvent
	end  chan struct{} // closed at the test's end: the RPC's context is gone
	mu   sync.Mutex
	sent []*cdcpb.ChangeDataRequest
}

func (f *fakeStream) Send(r *cdcpb.ChangeDataRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, r)
	return nil
}

func (f *fakeStream) Recv() (*cdcpb.ChangeDataEvent, error) {
	select {
	case ev, ok := <-f.in:
		if !ok {
			return nil, errors.New("stream closed")
		}
		return ev, nil
	case <-f.end:
		// A gRPC stream's Recv returns once its context is cancelled.
		return nil, context.Canceled
	}
}

func testCapture(t *testing.T) (*capture, *fakeSink, *fakeStream, *feed) {
	t.Helper()
	a := &Agent{cfg: Config{Settings: flush.Settings{FileTarget: 1 << 30}, FlushInterval: time.Second, BlockedGrace: 100 * time.Millisecond}, log: hclog.NewNullLogger(), tasks: map[string]*runner{}}
	met, err := newMetrics(prometheus.NewRegistry(), a)
	require.NoError(t, err)
	a.met = met
	r := &runner{a: a, name: "t", log: a.log, rec: &pitrpb.TaskRecord{Info: &pitrpb.TaskInfo{Name: "t", StartTs: 100}}}
	sink := &fakeSink{}
	c := newCapture(r, sink)
	ts := uint64(1000)
	c.tso = func(context.Context) (uint64, error) { ts++; return ts, nil }
	fs := &fakeStream{in: make(chan *cdcpb.ChangeDataEvent), end: make(chan struct{})}
	t.Cleanup(func() { close(fs.end) })
	f := &feed{stream: fs}
	c.feed = f
	c.deregister = true // TiKV ≥ 7.3
	return c, sink, fs, f
}

// addRegion subscribes a region as reconcile would and returns its request id.
func addRegion(c *capture, id uint64, start, end string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &region{id: id, epoch: metapb.RegionEpoch{Version: 1, ConfVer: 1}, start: []byte(start), end: []byte(end)}
	r.encStart, r.encEnd = keyspace.EncodeKey(r.start), keyspace.EncodeKey(r.end)
	c.regions[id] = r
	c.subscribeLocked(r, 100, time.Now())
	return r.requestID
}

func entries(region, req uint64, rows ...*cdcpb.Event_Row) *cdcpb.ChangeDataEvent {
	return &cdcpb.ChangeDataEvent{Events: []*cdcpb.Event{{RegionId: region, RequestId: req, Event: &cdcpb.Event_Entries_{Entries: &cdcpb.Event_Entries{Entries: rows}}}}}
}

func resolvedTS(ts uint64, regions ...uint64) *cdcpb.ChangeDataEvent {
	return &cdcpb.ChangeDataEvent{ResolvedTs: &cdcpb.ResolvedTs{Regions: regions, Ts: ts}}
}

func regionErr(region, req uint64, e *cdcpb.Error) *cdcpb.ChangeDataEvent {
	return &cdcpb.ChangeDataEvent{Events: []*cdcpb.Event{{RegionId: region, RequestId: req, Event: &cdcpb.Event_Error{Error: e}}}}
}

// TestCaptureCut drives a capture with recorded-style messages: resolved ts
// only counts after INITIALIZED, a cut covers (from, resolved] and moves the
// checkpoint only when the flush succeeds, a region error keeps its rows.
func TestCaptureCut(t *testing.T) {
	c, sink, fs, f := testCapture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.recv(ctx, f, newBackoff(time.Millisecond, time.Millisecond)) }()
	send := func(ev *cdcpb.ChangeDataEvent) {
		select {
		case fs.in <- ev:
		case <-time.After(10 * time.Second):
			t.Fatal("the capture stopped reading")
		}
	}
	sync := func() { send(&cdcpb.ChangeDataEvent{}) }

	req := addRegion(c, 5, "a", "m")
	require.Len(t, fs.sent, 0, "subscribeLocked only builds the request")
	send(entries(5, req, prewrite("b", 110, "vb"), committed("c", 101, 105, "vc")))
	send(resolvedTS(150, 5)) // before INITIALIZED: ignored
	send(entries(5, req, initialized()))
	sync()
	c.mu.Lock()
	require.Equal(t, stateNormal, c.regions[5].state)
	require.Zero(t, c.regions[5].m.resolvedTS)
	c.mu.Unlock()
	meta, err := c.cut(ctx, false)
	require.NoError(t, err)
	require.Nil(t, meta, "nothing resolved, nothing buffered in the fake: no flush")

	send(entries(5, req, commit("b", 110, 120)))
	send(resolvedTS(130, 5, 99)) // region 99 is not ours
	sync()
	require.Equal(t, []string{"c", "b"}, sink.keys())

	// A failed flush leaves the checkpoint where it was.
	sink.fail = errors.New("storage down")
	_, err = c.cut(ctx, false)
	require.Error(t, err)
	require.Equal(t, uint64(100), c.progress()[0].Checkpoint)
	require.Contains(t, c.progress()[0].Reason, "flush failing")

	sink.fail = nil
	meta, err = c.cut(ctx, false)
	require.NoError(t, err)
	require.NotNil(t, meta)
	require.Len(t, sink.flushes, 1)
	cov := sink.flushes[0]
	require.Len(t, cov, 1)
	require.Equal(t, uint64(5), cov[0].RegionId)
	require.Equal(t, uint64(100), cov[0].FromTs)
	require.Equal(t, uint64(130), cov[0].ToTs)
	require.Equal(t, "a", string(cov[0].StartKey))
	require.Equal(t, "m", string(cov[0].EndKey))
	p := c.progress()
	require.Len(t, p, 1)
	require.Equal(t, uint64(130), p[0].Checkpoint)
	require.Empty(t, p[0].Reason)
	require.Equal(t, uint64(130), c.task.flushedMin([]byte("a"), []byte("m")))

	// A long transaction keeps a pending prewrite across flushes.
	send(entries(5, req, prewrite("d", 140, "vd")))
	send(resolvedTS(139, 5))
	sync()
	_, err = c.cut(ctx, false)
	require.NoError(t, err)
	require.Equal(t, uint64(140), c.progress()[0].OldestPendingStartTs)

	// NotLeader: the region goes idle; rows already received stay.
	send(regionErr(5, req, &cdcpb.Error{NotLeader: &errorpb.NotLeader{RegionId: 5}}))
	send(entries(5, req, committed("late", 1, 200, "x"))) // after the error: ignored
	sync()
	c.mu.Lock()
	require.Equal(t, stateIdle, c.regions[5].state)
	require.Empty(t, c.subs)
	c.mu.Unlock()
	require.Equal(t, []string{"c", "b"}, sink.keys())
	require.Equal(t, "resubscribing after NotLeader", c.progress()[0].Reason)

	// Subscribed again, it starts from its own flushed checkpoint.
	c.mu.Lock()
	c.subscribeLocked(c.regions[5], 100, time.Now())
	require.Equal(t, uint64(139), c.regions[5].from)
	c.mu.Unlock()

	close(fs.in)
	require.Error(t, <-done)
}

// TestCaptureBackpressure: when the flusher blocks past the grace period,
// the capture does not stop reading (TiKV's sink quota is store-wide): it
// releases the region whose rows wait (Deregister on TiKV ≥ 7.3, a new
// stream below), drops what the region sends until then, subscribes
// nothing while blocked, and hands the refused rows to the probe.
func TestCaptureBackpressure(t *testing.T) {
	for _, tc := range []struct {
		name       string
		deregister bool
	}{{"7.3+", true}, {"7.1", false}} {
		t.Run(tc.name, func(t *testing.T) {
			c, sink, fs, f := testCapture(t)
			c.deregister = tc.deregister
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- c.recv(ctx, f, newBackoff(time.Millisecond, time.Millisecond)) }()
			req := addRegion(c, 7, "", "")
			fs.in <- entries(7, req, initialized())

			gate := make(chan struct{})
			sink.mu.Lock()
			sink.gate = gate
			sink.mu.Unlock()
			fs.in <- entries(7, req, committed("k1", 101, 105, "v"))
			if !tc.deregister {
				// Below 7.3 the stream ends to release the region.
				select {
				case err := <-done:
					require.ErrorIs(t, err, errReopen)
				case <-time.After(10 * time.Second):
					t.Fatal("the stream was not reopened")
				}
				fs.mu.Lock()
				require.Empty(t, fs.sent, "no Deregister below 7.3")
				fs.mu.Unlock()
			} else {
				select {
				case fs.in <- entries(7, req, committed("k2", 101, 106, "v")):
				case <-time.After(10 * time.Second):
					t.Fatal("the capture stopped reading while the flusher was blocked")
				}
				fs.in <- &cdcpb.ChangeDataEvent{}
				fs.mu.Lock()
				require.Len(t, fs.sent, 1)
				require.NotNil(t, fs.sent[0].GetDeregister())
				fs.mu.Unlock()
				fs.in <- regionErr(7, req, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: 7}})
				fs.in <- &cdcpb.ChangeDataEvent{}
			}
			c.mu.Lock()
			require.True(t, c.blocked)
			require.Equal(t, stateIdle, c.regions[7].state)
			require.Contains(t, c.regions[7].reason, "flusher is full")
			c.mu.Unlock()
			require.Len(t, c.probe, 1, "the refused rows wait for the probe")
			require.NoError(t, c.reconcile(ctx, false))
			c.mu.Lock()
			require.Equal(t, stateIdle, c.regions[7].state, "nothing is subscribed while blocked")
			c.mu.Unlock()
			close(gate)
			require.Empty(t, sink.keys(), "the rows of the released region were dropped")
		})
	}
}

// TestCaptureProtocolError: an unmatched COMMIT after INITIALIZED
// deregisters the region; its end (RegionNotFound) makes it idle.
func TestCaptureProtocolError(t *testing.T) {
	c, _, fs, f := testCapture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.recv(ctx, f, newBackoff(time.Millisecond, time.Millisecond)) }()
	req := addRegion(c, 9, "a", "z")
	fs.in <- entries(9, req, initialized(), commit("q", 110, 120))
	fs.in <- resolvedTS(300, 9)
	fs.in <- &cdcpb.ChangeDataEvent{}
	c.mu.Lock()
	require.Equal(t, stateStopping, c.regions[9].state)
	c.mu.Unlock()
	fs.mu.Lock()
	require.Len(t, fs.sent, 1)
	require.NotNil(t, fs.sent[0].GetDeregister())
	fs.mu.Unlock()
	fs.in <- regionErr(9, req, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: 9}})
	fs.in <- &cdcpb.ChangeDataEvent{}
	c.mu.Lock()
	require.Equal(t, stateIdle, c.regions[9].state)
	c.mu.Unlock()
}

// TestCaptureProtocolErrorBefore73: with no Deregister, the stream is
// reopened instead.
func TestCaptureProtocolErrorBefore73(t *testing.T) {
	c, _, fs, f := testCapture(t)
	c.deregister = false
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.recv(ctx, f, newBackoff(time.Millisecond, time.Millisecond)) }()
	req := addRegion(c, 9, "a", "z")
	fs.in <- entries(9, req, initialized(), commit("q", 110, 120))
	require.ErrorIs(t, <-done, errReopen)
	fs.mu.Lock()
	require.Empty(t, fs.sent)
	fs.mu.Unlock()
	c.mu.Lock()
	require.Equal(t, stateIdle, c.regions[9].state)
	require.Empty(t, c.subs)
	c.mu.Unlock()
}

// TestCaptureDuplicateRequestBefore73: TiKV < 7.3 answers DuplicateRequest
// while it still holds a subscription of the region on the stream; only a
// new stream ends that, so the capture reopens it instead of retrying the
// Register forever.
func TestCaptureDuplicateRequestBefore73(t *testing.T) {
	for _, tc := range []struct {
		name       string
		deregister bool
	}{{"7.3+", true}, {"7.1", false}} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, fs, f := testCapture(t)
			c.deregister = tc.deregister
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- c.recv(ctx, f, newBackoff(time.Millisecond, time.Millisecond)) }()
			req := addRegion(c, 3, "a", "z")
			fs.in <- regionErr(3, req, &cdcpb.Error{DuplicateRequest: &cdcpb.DuplicateRequest{RegionId: 3}})
			if tc.deregister {
				fs.in <- &cdcpb.ChangeDataEvent{}
				c.mu.Lock()
				require.Equal(t, stateIdle, c.regions[3].state)
				require.False(t, c.reopen)
				c.mu.Unlock()
				return
			}
			select {
			case err := <-done:
				require.ErrorIs(t, err, errReopen)
			case <-time.After(10 * time.Second):
				t.Fatal("the stream was not reopened after DuplicateRequest")
			}
		})
	}
}
