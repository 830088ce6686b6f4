package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/testkit"
)

// env is a playground with a task and one in-process agent per store.
type env struct {
	t       *testing.T
	p       *playground.Playground
	etcd    *clientv3.Client
	st      storage.Storage
	url     string
	startTS uint64
	log     hclog.Logger
	cfg     agent.Config // template for agents

	mu      sync.Mutex
	agents  map[uint64]*runningAgent
	lastErr error // of the last failed GetProgress

	// resolveLocks, when set, is called about once a second while waiting
	// for a checkpoint: it resolves locks left by transactions cut off at
	// the end of a workload, including a prewrite that reached its store
	// after the first resolving read (a cancelled client's request in
	// flight), which would otherwise hold its region's resolved ts forever.
	resolveLocks func(ctx context.Context)
}

type runningAgent struct {
	a      *agent.Agent // in-process, or
	proc   *exec.Cmd    // a `pitr agent` process
	cancel context.CancelFunc
	done   chan error
	client pitrpb.AgentClient
	conn   *grpc.ClientConn
	dir    string // data dir (in-process agents)
}

func testLogger(t *testing.T) hclog.Logger {
	level := hclog.Warn
	if os.Getenv("PITR_TEST_LOG") != "" {
		level = hclog.LevelFromString(os.Getenv("PITR_TEST_LOG"))
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: level, Output: os.Stderr})
}

func newEnv(t *testing.T, ranges []*pitrpb.KeyRange, flushInterval time.Duration) *env {
	t.Helper()
	return newEnvWith(t, playground.Config{Stores: 3}, ranges, flushInterval)
}

// newEnvWith is newEnv on a playground configured by pc (GC off, 200ms
// resolved ts and the test logger are set here), started by testkit's
// cluster layer. The task and the agents are this package's own: the task
// has key ranges and no coordinator, and the agents run in-process or as
// processes, each with a gRPC client.
func newEnvWith(t *testing.T, pc playground.Config, ranges []*pitrpb.KeyRange, flushInterval time.Duration) *env {
	t.Helper()
	ctx := context.Background()
	log := testLogger(t)
	pc.GCInterval, pc.MinTSInterval, pc.Logger = -1, 200*time.Millisecond, log
	// No client-go client here: the tests make theirs.
	kc := testkit.StartCluster(t, ctx, testkit.Options{Playground: pc, Component: "pitr-agent-test", WithoutKV: true})
	p, cli := kc.P, kc.Clients.Etcd

	startTS, err := p.PD.TS(ctx)
	require.NoError(t, err)
	url := "file://" + t.TempDir()
	st, err := storage.Open(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	rec := &pitrpb.TaskRecord{
		Info:       &pitrpb.TaskInfo{Name: "t1", StartTs: startTS, Ranges: ranges},
		StorageUrl: url, State: pitrpb.TaskState_TASK_STATE_RUNNING,
	}
	b, err := task.EncodeRecord(rec)
	require.NoError(t, err)
	_, err = cli.Put(ctx, task.Key("t1"), string(b))
	require.NoError(t, err)

	e := &env{t: t, p: p, etcd: cli, st: st, url: url, startTS: startTS, log: log, agents: map[uint64]*runningAgent{}}
	e.cfg = agent.Config{
		PDAddrs:        []string{p.PDAddr()},
		ListenAddr:     "127.0.0.1:0",
		HTTPAddr:       "127.0.0.1:0",
		FlushInterval:  flushInterval,
		RegionInterval: 300 * time.Millisecond,
		ConnectTimeout: 5 * time.Second,
		Settings:       flush.Settings{MemoryBudget: 16 << 20, FileTarget: 4 << 20},
		Logger:         log,
	}
	t.Cleanup(e.stopAll)
	return e
}

// startAgent starts (or restarts) the agent of a store.
func (e *env) startAgent(id uint64) {
	e.t.Helper()
	cfg := e.cfg
	cfg.TiKVAddr = e.p.StoreAddrs()[id]
	cfg.DataDir = e.t.TempDir()
	a, err := agent.New(cfg)
	require.NoError(e.t, err)
	require.Equal(e.t, id, a.StoreID())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	conn, err := grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(e.t, err)
	e.mu.Lock()
	e.agents[id] = &runningAgent{a: a, cancel: cancel, done: done, client: pitrpb.NewAgentClient(conn), conn: conn, dir: cfg.DataDir}
	e.mu.Unlock()
}

// startProcess starts the agent of a store as a `pitr agent` process and
// finds its gRPC address in its etcd registration.
func (e *env) startProcess(id uint64, bin string) {
	e.t.Helper()
	dir := e.t.TempDir()
	conf := filepath.Join(dir, "agent.toml")
	require.NoError(e.t, os.WriteFile(conf, []byte(fmt.Sprintf(
		"flush-interval = %q\nregion-interval = %q\nmemory-budget = \"16MiB\"\nfile-target = \"4MiB\"\n",
		e.cfg.FlushInterval, e.cfg.RegionInterval)), 0o600))
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	require.NoError(e.t, err)
	cmd := exec.Command(bin, "agent", "--pd", e.p.PDAddr(), "--tikv", e.p.StoreAddrs()[id], "--config", conf,
		"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(e.t, cmd.Start())
	e.t.Cleanup(func() {
		if e.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			e.t.Logf("agent process of store %d (%s):\n%s", id, logf.Name(), b)
		}
	})
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); _ = logf.Close() }()
	// Its registration names its address (killAgent deleted the previous
	// process's record).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var addr string
	for addr == "" {
		resp, err := e.etcd.Get(ctx, task.AgentKey(id))
		require.NoError(e.t, err, "agent process did not register; log in %s", logf.Name())
		if len(resp.Kvs) > 0 {
			var rec pitrpb.AgentRecord
			require.NoError(e.t, protobuf.Unmarshal(resp.Kvs[0].Value, &rec))
			addr = rec.Addr
			break
		}
		select {
		case err := <-done:
			e.t.Fatalf("agent process exited: %v; log in %s", err, logf.Name())
		case <-time.After(50 * time.Millisecond): // polling etcd
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(e.t, err)
	e.mu.Lock()
	e.agents[id] = &runningAgent{proc: cmd, done: done, client: pitrpb.NewAgentClient(conn), conn: conn}
	e.mu.Unlock()
}

// killAgent stops an agent abruptly: no final flush (SIGKILL for a
// process, a cancelled context in-process).
func (e *env) killAgent(id uint64) {
	e.mu.Lock()
	ra := e.agents[id]
	delete(e.agents, id)
	e.mu.Unlock()
	if ra == nil {
		return
	}
	_ = ra.conn.Close()
	if ra.proc != nil {
		_ = ra.proc.Process.Kill()
		<-ra.done
		// Its registration outlives it until the lease expires; drop it so
		// that startProcess finds the next one.
		_, err := e.etcd.Delete(context.Background(), task.AgentKey(id))
		require.NoError(e.t, err)
		return
	}
	ra.cancel()
	err := <-ra.done
	_ = ra.a.Close()
	require.NoError(e.t, err)
}

func (e *env) stopAll() {
	for _, id := range e.p.StoreIDs() {
		e.killAgent(id)
	}
}

func (e *env) clients() []pitrpb.AgentClient {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []pitrpb.AgentClient
	for _, ra := range e.agents {
		out = append(out, ra.client)
	}
	return out
}

// lowest returns the lowest flushed checkpoint over [start, end) from every
// agent's progress: for each piece of the range the best report counts
// (every report is a proof on its own), and the result is the minimum of
// those; 0 when part of the range is not reported.
func lowest(reports []*pitrpb.RegionProgress, start, end []byte) uint64 {
	var bounds [][]byte
	bounds = append(bounds, start)
	for _, r := range reports {
		bounds = append(bounds, r.StartKey)
		if len(r.EndKey) > 0 {
			bounds = append(bounds, r.EndKey)
		}
	}
	sort.Slice(bounds, func(i, j int) bool { return bytes.Compare(bounds[i], bounds[j]) < 0 })
	var low uint64
	for i, b := range bounds {
		if (i > 0 && bytes.Equal(b, bounds[i-1])) || bytes.Compare(b, start) < 0 || (len(end) > 0 && bytes.Compare(b, end) >= 0) {
			continue
		}
		var best uint64
		for _, r := range reports {
			if bytes.Compare(r.StartKey, b) <= 0 && (len(r.EndKey) == 0 || bytes.Compare(b, r.EndKey) < 0) {
				best = max(best, r.Checkpoint)
			}
		}
		if best == 0 {
			return 0
		}
		if low == 0 || best < low {
			low = best
		}
	}
	return low
}

// progress collects every agent's regions.
func (e *env) progress(ctx context.Context) []*pitrpb.RegionProgress {
	var all []*pitrpb.RegionProgress
	for _, c := range e.clients() {
		resp, err := c.GetProgress(ctx, &pitrpb.GetProgressRequest{Task: "t1"})
		if err != nil {
			e.lastErr = err // starting or restarting: its regions count as uncovered
			continue
		}
		all = append(all, resp.Regions...)
	}
	return all
}

func (e *env) flushAll(ctx context.Context) {
	for _, c := range e.clients() {
		_, _ = c.FlushNow(ctx, &pitrpb.FlushNowRequest{Task: "t1"})
	}
}

// waitCheckpoint flushes every agent until the lowest flushed checkpoint
// over [start, end) reaches target, and returns it.
func (e *env) waitCheckpoint(start, end []byte, target uint64, within time.Duration) uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var low uint64
	var last []*pitrpb.RegionProgress
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	var resolved time.Time
	for ctx.Err() == nil {
		if e.resolveLocks != nil && time.Since(resolved) > time.Second {
			e.resolveLocks(ctx)
			resolved = time.Now()
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		e.flushAll(rctx)
		reports := e.progress(rctx)
		rcancel()
		if len(reports) > 0 {
			last = reports
		}
		if low = lowest(reports, start, end); low >= target {
			return low
		}
		select {
		case <-ctx.Done():
		case <-poll.C:
		}
	}
	var lines []string
	for _, r := range last {
		lines = append(lines, fmt.Sprintf("region %d [%q,%q) cp=%d reason=%q", r.RegionId, r.StartKey, r.EndKey, r.Checkpoint, r.Reason))
	}
	e.t.Fatalf("checkpoint %d did not reach %d within %s (last GetProgress error: %v):\n%s", low, target, within, e.lastErr, strings.Join(lines, "\n"))
	return 0
}

type version struct {
	op    logfile.Op
	value string
}

// captured decodes every file of every meta in storage.
func (e *env) captured(ctx context.Context) (map[string]map[uint64]version, int) {
	e.t.Helper()
	got := map[string]map[uint64]version{}
	metas := 0
	err := e.st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		b, err := e.st.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		m, err := logfile.DecodeMeta(b)
		if err != nil {
			return err
		}
		metas++
		for _, f := range m.Files {
			data, err := e.st.Get(ctx, f.Path)
			if err != nil {
				return fmt.Errorf("meta %s: file %s: %w", oi.Key, f.Path, err)
			}
			rd, err := logfile.NewReader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				return err
			}
			it := rd.Iter(nil, nil)
			for it.Next() {
				r := it.Row()
				k := string(r.Key)
				if got[k] == nil {
					got[k] = map[uint64]version{}
				}
				v := version{op: r.Op, value: string(r.Value)}
				if old, dup := got[k][r.CommitTS]; dup && old != v {
					return fmt.Errorf("key %q commit_ts %d: two different rows %v and %v", k, r.CommitTS, old, v)
				}
				got[k][r.CommitTS] = v
			}
			if err := it.Err(); err != nil {
				return err
			}
			_ = it.Close()
		}
		return nil
	})
	require.NoError(e.t, err)
	return got, metas
}

// history reads every committed version in [start, end) from the engine.
func (e *env) history(start, end []byte) map[string]map[uint64]version {
	want := map[string]map[uint64]version{}
	require.NoError(e.t, e.p.Engine.Snapshot().DeltaScan(start, end, 0, func(de mvcc.DeltaEntry) error {
		for _, w := range de.Writes {
			k := string(de.Key)
			if want[k] == nil {
				want[k] = map[uint64]version{}
			}
			v := version{op: logfile.OpPut, value: string(w.Value)}
			if w.Write.Type == mvcc.WriteDelete {
				v = version{op: logfile.OpDelete}
			}
			want[k][w.CommitTS] = v
		}
		return nil
	}))
	return want
}

// check compares storage with the engine's history: every version committed
// in (startTS, upTo] is there with its value, and nothing that is not a
// committed version is.
func (e *env) check(ctx context.Context, start, end []byte, upTo uint64) (rows, metas int) {
	e.t.Helper()
	got, metas := e.captured(ctx)
	want := e.history(start, end)
	missing, wrong := 0, 0
	for k, vs := range want {
		for ts, v := range vs {
			if ts <= e.startTS || ts > upTo {
				continue
			}
			g, ok := got[k][ts]
			if !ok {
				if missing < 10 {
					e.t.Errorf("missing: key %q commit_ts %d", k, ts)
				}
				missing++
				continue
			}
			if g != v {
				e.t.Errorf("key %q commit_ts %d: got %v, want %v", k, ts, g, v)
				wrong++
			}
		}
	}
	for k, vs := range got {
		for ts, g := range vs {
			rows++
			if v, ok := want[k][ts]; !ok || v != g {
				if wrong < 10 {
					e.t.Errorf("extra: key %q commit_ts %d %v is not a committed version", k, ts, g)
				}
				wrong++
			}
		}
	}
	require.Zero(e.t, missing, "missing versions")
	require.Zero(e.t, wrong, "wrong or extra versions")
	return rows, metas
}

// TestNothingLostNothingExtra runs a bank workload while regions split,
// leaders move, a store restarts and an agent is killed, then checks that
// storage holds exactly the committed history up to the lowest flushed
// checkpoint.
func TestNothingLostNothingExtra(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	dur := 15 * time.Second
	if os.Getenv("PITR_LONG") != "" {
		dur = 60 * time.Second
	}
	bin := pitrBinary(t)
	start, end := []byte("bank/"), []byte("bank0")
	e := newEnv(t, []*pitrpb.KeyRange{{StartKey: start, EndKey: end}}, 500*time.Millisecond)
	ids := e.p.StoreIDs()
	// The first store's agent is a `pitr agent` process (killed with
	// SIGKILL), the others run in-process (one is killed by cancelling it).
	e.startProcess(ids[0], bin)
	for _, id := range ids[1:] {
		e.startAgent(id)
	}
	tc, err := workload.Connect(context.Background(), []string{e.p.PDAddr()})
	require.NoError(t, err)
	defer tc.Close()
	bank := &workload.Bank{Client: tc, Prefix: "bank/", Accounts: 200, Initial: 1000}
	ctx := context.Background()
	require.NoError(t, bank.Init(ctx))

	wctx, stopWork := context.WithTimeout(ctx, dur)
	defer stopWork()
	var st workload.Stats
	var wg sync.WaitGroup
	var workErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		workErr = bank.Run(wctx, 8, &st)
	}()

	// Chaos: splits and leader transfers all along; one store restart and
	// one agent kill in the middle.
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var splits, transfers int
	began := time.Now()
	restarted, killed, killed9 := false, false, false
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for wctx.Err() == nil {
		select {
		case <-wctx.Done():
		case <-tick.C:
		}
		el := time.Since(began)
		switch {
		case !killed && el > dur/5:
			killed = true
			victim := ids[1+rng.Intn(len(ids)-1)]
			t.Logf("killing the in-process agent of store %d", victim)
			e.killAgent(victim)
			e.startAgent(victim)
		case !killed9 && el > 2*dur/5:
			killed9 = true
			t.Logf("kill -9 of the agent process of store %d", ids[0])
			e.killAgent(ids[0])
			e.startProcess(ids[0], bin)
		case !restarted && el > 3*dur/5:
			restarted = true
			victim := ids[rng.Intn(len(ids))]
			t.Logf("restarting store %d", victim)
			require.NoError(t, e.p.StopStore(victim))
			time.Sleep(time.Second) // the store stays down for a while (not synchronisation)
			require.NoError(t, e.p.StartStore(victim))
		case rng.Intn(3) == 0:
			if _, err := e.p.Cluster.Split(bank.Key(rng.Intn(bank.Accounts))); err == nil {
				splits++
			} else if !errors.Is(err, cluster.ErrBadSplitKey) {
				t.Errorf("split: %v", err)
			}
		default:
			rs := e.p.Cluster.Regions()
			r := rs[rng.Intn(len(rs))]
			to := ids[rng.Intn(len(ids))]
			if err := e.p.Cluster.TransferLeader(r.ID, to); err == nil {
				transfers++
			}
		}
	}
	wg.Wait()
	require.NoError(t, workErr)
	t.Logf("workload: %d transfers committed, %d conflicts; chaos: %d splits, %d leader transfers", st.Committed.Load(), st.Conflicts.Load(), splits, transfers)
	require.Greater(t, st.Committed.Load(), int64(50))

	// Transactions cut off by the end of the workload may have left locks;
	// they hold the resolved ts of their regions (the agents report them as
	// long transactions) until a reader resolves them. Reading every
	// account at endTS does that, as TiDB's GC or lock resolution would.
	endTS, err := e.p.PD.TS(ctx)
	require.NoError(t, err)
	total, n, err := bank.Sum(ctx, endTS)
	require.NoError(t, err)
	require.Equal(t, bank.Total(), total)
	require.Equal(t, bank.Accounts, n)

	e.resolveLocks = func(ctx context.Context) { _ = bank.ResolveLocks(ctx) }
	low := e.waitCheckpoint(start, end, endTS, 30*time.Second)
	require.Greater(t, low, e.startTS)
	rows, metas := e.check(ctx, start, end, low)
	t.Logf("checked %d rows in %d metas up to %d (start %d)", rows, metas, low, e.startTS)

	// SIGTERM: the process flushes once more and exits 0.
	e.mu.Lock()
	proc := e.agents[ids[0]]
	delete(e.agents, ids[0])
	e.mu.Unlock()
	_ = proc.conn.Close()
	require.NoError(t, proc.proc.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-proc.done:
		require.NoError(t, err, "exit status after SIGTERM")
	case <-time.After(30 * time.Second):
		t.Fatal("agent process did not stop within 30s of SIGTERM")
	}
}

// TestLowLoadFlushesEveryInterval: with a trickle of writes, a meta with
// coverage still appears every flush interval.
func TestLowLoadFlushesEveryInterval(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	interval := 500 * time.Millisecond
	e := newEnv(t, nil, interval)
	for _, id := range e.p.StoreIDs() {
		e.startAgent(id)
	}
	tc, err := workload.Connect(context.Background(), []string{e.p.PDAddr()})
	require.NoError(t, err)
	defer tc.Close()
	ctx := context.Background()

	count := func() (metas, files int) {
		require.NoError(t, e.st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
			b, err := e.st.Get(ctx, oi.Key)
			if err != nil {
				return err
			}
			m, err := logfile.DecodeMeta(b)
			if err != nil {
				return err
			}
			metas++
			files += len(m.Files)
			return nil
		}))
		return metas, files
	}
	// Wait (bounded) for the agents to start flushing.
	deadline := time.Now().Add(20 * time.Second)
	for m, _ := count(); m == 0; m, _ = count() {
		require.True(t, time.Now().Before(deadline), "no meta within 20s")
		time.Sleep(50 * time.Millisecond) // polling storage
	}
	// One small write per interval for a few intervals: each write lands
	// in a data file within about one interval.
	for i := 0; i < 4; i++ {
		txn, err := tc.Begin()
		require.NoError(t, err)
		key := []byte(fmt.Sprintf("low/%d", i))
		require.NoError(t, txn.Set(key, []byte("v")))
		require.NoError(t, txn.Commit(ctx))
		_, files0 := count()
		deadline := time.Now().Add(3 * interval)
		for {
			if _, files := count(); files > files0 {
				break
			}
			require.True(t, time.Now().Before(deadline), "no data file within 3 flush intervals of write %d", i)
			time.Sleep(20 * time.Millisecond) // polling storage
		}
	}
	metas0, _ := count()
	time.Sleep(4 * interval) // measuring the rate over a window, not synchronising
	metas1, _ := count()

	// Status, /healthz and /metrics of one agent.
	e.mu.Lock()
	ra := e.agents[e.p.StoreIDs()[0]]
	e.mu.Unlock()
	st, err := ra.client.Status(ctx, &pitrpb.StatusRequest{})
	require.NoError(t, err)
	require.Equal(t, []string{"t1"}, st.Tasks)
	require.Equal(t, e.p.StoreIDs()[0], st.StoreId)
	resp, err := http.Get("http://" + ra.a.HTTPAddr() + "/healthz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	resp, err = http.Get("http://" + ra.a.HTTPAddr() + "/metrics")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, m := range []string{"pitr_agent_events_total", "pitr_agent_captured_bytes_total", "pitr_agent_flush_duration_seconds",
		"pitr_agent_region_lag_seconds", "pitr_agent_region_max_lag_seconds", "pitr_agent_regions_subscribed",
		"pitr_agent_buffered_bytes", `pitr_flush_memory_bytes{task="t1"}`} {
		require.Contains(t, string(body), m)
	}
	// A stopped store: its agent's stream is down, /healthz says so.
	require.NoError(t, e.p.StopStore(e.p.StoreIDs()[0]))
	deadline = time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + ra.a.HTTPAddr() + "/healthz")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			require.Contains(t, string(body), "change stream")
			break
		}
		require.True(t, time.Now().Before(deadline), "healthz stayed OK with the store down")
		time.Sleep(50 * time.Millisecond) // polling
	}
	require.NoError(t, e.p.StartStore(e.p.StoreIDs()[0]))
	// Three agents, each a meta per interval while their regions advance;
	// at least one agent leads regions.
	require.GreaterOrEqual(t, metas1-metas0, 3, "metas per 4 intervals")
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// pitrBinary builds cmd/pitr once per test binary (PITR_BIN names a
// prebuilt one).
func pitrBinary(t *testing.T) string {
	if p := os.Getenv("PITR_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pitr-agent-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pitr")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/pitr-io/pitr/cmd/pitr").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binPath
}
