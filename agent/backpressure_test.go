package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// gatedSink blocks Add while closed, as a flusher whose memory and spill
// budgets are full.
type gatedSink struct {
	sink
	mu     sync.Mutex
	closed chan struct{} // non-nil: Add waits for it
	calls  int
}

func (g *gatedSink) block() {
	g.mu.Lock()
	g.closed = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedSink) open() {
	g.mu.Lock()
	if g.closed != nil {
		close(g.closed)
		g.closed = nil
	}
	g.mu.Unlock()
}

func (g *gatedSink) Add(ctx context.Context, rows []logfile.Row) error {
	g.mu.Lock()
	ch := g.closed
	g.calls++
	g.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.sink.Add(ctx, rows)
}

// ticdc is a plain EventFeed client standing in for a TiCDC changefeed on
// the same store: it reads as fast as it can and records what it got.
type ticdc struct {
	mu      sync.Mutex
	errs    []*cdcpb.Error
	commits int
	err     error
}

func startTiCDC(t *testing.T, addr string, clusterID uint64, regions []*cdcpb.ChangeDataRequest) *ticdc {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := cdcpb.NewChangeDataClient(cc).EventFeed(ctx)
	require.NoError(t, err)
	for _, req := range regions {
		req.Header = &cdcpb.Header{ClusterId: clusterID, TicdcVersion: "8.5.0"}
		require.NoError(t, stream.Send(req))
	}
	tc := &ticdc{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := stream.Recv()
			if err != nil {
				tc.mu.Lock()
				tc.err = err
				tc.mu.Unlock()
				return
			}
			tc.mu.Lock()
			for _, e := range ev.Events {
				if x := e.GetError(); x != nil {
					tc.errs = append(tc.errs, x)
				}
				for _, r := range e.GetEntries().GetEntries() {
					if r.Type == cdcpb.Event_COMMIT || r.Type == cdcpb.Event_COMMITTED {
						tc.commits++
					}
				}
			}
			tc.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cc.Close()
	})
	return tc
}

func (tc *ticdc) state() ([]*cdcpb.Error, int, error) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]*cdcpb.Error(nil), tc.errs...), tc.commits, tc.err
}

// TestFullFlusherReleasesRegions (R7): while the agent's flusher is full,
// the agent must not hold TiKV's store-wide sink quota. TiKV stops the
// whole region delegate when the quota overflows, so a TiCDC changefeed on
// the same store would get Congested and rescan. The agent releases its
// regions instead (Deregister, or a new stream below TiKV 7.3) and
// subscribes them again from their checkpoints once there is room;
// nothing is lost.
func TestFullFlusherReleasesRegions(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	for _, version := range []string{"8.5.0", "7.1.0"} {
		t.Run(version, func(t *testing.T) { testFullFlusher(t, version) })
	}
}

func testFullFlusher(t *testing.T, version string) {
	ctx := context.Background()
	level := hclog.Warn
	if os.Getenv("PITR_TEST_LOG") != "" {
		level = hclog.LevelFromString(os.Getenv("PITR_TEST_LOG"))
	}
	log := hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: level, Output: os.Stderr})
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1, MinTSInterval: 200 * time.Millisecond,
		TiKVVersion: version, CDCMemoryQuota: 1 << 20, Logger: log})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.PDAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	startTS, err := p.TS(ctx)
	require.NoError(t, err)
	url := "file://" + t.TempDir()
	rec := &pitrpb.TaskRecord{Info: &pitrpb.TaskInfo{Name: "t1", StartTs: startTS}, StorageUrl: url, State: pitrpb.TaskState_TASK_STATE_RUNNING}
	b, err := task.EncodeRecord(rec)
	require.NoError(t, err)
	_, err = cli.Put(ctx, task.Key("t1"), string(b))
	require.NoError(t, err)

	// The txn client first: client-go initialises the PD client's global
	// metrics, which the agent's PD client reads (a race otherwise).
	kv, err := workload.Connect(ctx, []string{p.PDAddr()})
	require.NoError(t, err)
	defer kv.Close()

	storeID := p.StoreIDs()[0]
	a, err := New(Config{
		PDAddrs: []string{p.PDAddr()}, TiKVAddr: p.StoreAddrs()[storeID], DataDir: t.TempDir(),
		ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: 300 * time.Millisecond,
		RegionInterval: 300 * time.Millisecond, ConnectTimeout: 5 * time.Second, Logger: log,
	})
	require.NoError(t, err)
	gate := &gatedSink{}
	a.wrapSink = func(s sink) sink { gate.sink = s; return gate }
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = a.Close()
	})

	// checkpoint is the lowest region checkpoint this agent reports over
	// the whole key space (0 until it covers it).
	checkpoint := func() uint64 {
		r, err := a.runner("t1")
		if err != nil {
			return 0
		}
		_, _ = r.flushNow(ctx)
		c, err := r.current()
		if err != nil {
			return 0
		}
		var low uint64
		var end []byte
		for i, rp := range c.progress() {
			if (i == 0 && len(rp.StartKey) != 0) || (i > 0 && string(rp.StartKey) != string(end)) {
				return 0
			}
			end = rp.EndKey
			if low == 0 || rp.Checkpoint < low {
				low = rp.Checkpoint
			}
		}
		if len(end) != 0 {
			return 0
		}
		return low
	}
	waitCheckpoint := func(target uint64, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for cp := checkpoint(); cp < target; cp = checkpoint() {
			require.True(t, time.Now().Before(deadline), "checkpoint %d did not reach %d within %s", cp, target, within)
			time.Sleep(50 * time.Millisecond) // polling
		}
	}
	ts0, err := p.TS(ctx)
	require.NoError(t, err)
	waitCheckpoint(ts0, 30*time.Second)

	var reqs []*cdcpb.ChangeDataRequest
	for i, r := range p.Cluster.Regions() {
		ep := r.Epoch
		reqs = append(reqs, &cdcpb.ChangeDataRequest{RegionId: r.ID, RegionEpoch: &ep, RequestId: uint64(i + 1),
			CheckpointTs: ts0, StartKey: r.StartKey, EndKey: r.EndKey, ExtraOp: kvrpcpb.ExtraOp_ReadOldValue,
			Request: &cdcpb.ChangeDataRequest_Register_{Register: &cdcpb.ChangeDataRequest_Register{}}})
	}
	tc := startTiCDC(t, p.StoreAddrs()[storeID], p.Cluster.ID(), reqs)

	// The flusher is full; 12 MiB of writes follow, more than the agent's
	// gRPC receive window (8 MiB) and TiKV's quota (1 MiB) together, at
	// about 4 MiB/s.
	gate.block()
	const n, size = 192, 64 << 10
	pace := time.NewTicker(16 * time.Millisecond)
	defer pace.Stop()
	for i := 0; i < n; i++ {
		txn, err := kv.Begin()
		require.NoError(t, err)
		require.NoError(t, txn.Set([]byte(fmt.Sprintf("big/%04d", i)), make([]byte, size)))
		require.NoError(t, txn.Commit(ctx))
		<-pace.C // pacing the load, not synchronising
	}
	endTS, err := p.TS(ctx)
	require.NoError(t, err)
	deadline := time.Now().Add(30 * time.Second)
	for {
		errs, commits, serr := tc.state()
		require.NoError(t, serr, "the TiCDC stand-in's stream broke")
		require.Empty(t, errs, "the TiCDC stand-in's regions were stopped while the agent's flusher was full")
		if commits >= n {
			break
		}
		require.True(t, time.Now().Before(deadline), "the TiCDC stand-in got %d of %d commits", commits, n)
		time.Sleep(50 * time.Millisecond) // polling
	}

	// Room again: the agent catches up from its checkpoints, nothing lost.
	gate.open()
	waitCheckpoint(endTS, 60*time.Second)
	errs, _, _ := tc.state()
	require.Empty(t, errs)
	keys := map[string]bool{}
	st, err := openStorage(ctx, url)
	require.NoError(t, err)
	defer st.Close()
	for k := range storedKeys(t, ctx, st) {
		keys[k] = true
	}
	for i := 0; i < n; i++ {
		require.True(t, keys[fmt.Sprintf("big/%04d", i)], "key big/%04d is not in storage", i)
	}
}

func openStorage(ctx context.Context, url string) (storage.Storage, error) {
	return storage.Open(ctx, url)
}

// storedKeys returns every key of every data file a meta in st references.
func storedKeys(t *testing.T, ctx context.Context, st storage.Storage) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	require.NoError(t, st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		b, err := st.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		m, err := logfile.DecodeMeta(b)
		if err != nil {
			return err
		}
		for _, f := range m.Files {
			data, err := st.Get(ctx, f.Path)
			if err != nil {
				return err
			}
			rd, err := logfile.NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				return err
			}
			it := rd.Iter(nil, nil)
			for it.Next() {
				out[string(it.Row().Key)] = true
			}
			if err := it.Err(); err != nil {
				return err
			}
			_ = it.Close()
		}
		return nil
	}))
	return out
}
