package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/mvcc"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

func init() {
	register(Section{Name: "capture", Run: benchCapture})
}

// benchCapture measures the agent: capture throughput from EventFeed to
// Parquet files on file:// against a consumer that discards the same
// stream, and the resident memory of a `pitr agent` process subscribed to
// 1k and 10k regions.
func benchCapture(ctx context.Context, env *Env) ([]Row, error) {
	quietClientGo()
	var rows []Row
	// Three file targets' worth: flushes of earlier data overlap the scan
	// of later data, as under sustained load (one file target would time a
	// scan and then a flush, one after the other).
	capMBs, discardMBs, err := captureThroughput(ctx, env, 3*flush.DefaultFileTarget)
	if err != nil {
		return nil, err
	}
	rows = append(rows,
		Row{Name: "EventFeed → discard, key+value bytes (limit)", Value: discardMBs, Unit: "MB/s"},
		Row{Name: "agent EventFeed → Parquet on file://", Value: capMBs, Unit: "MB/s", Baseline: "discard", Ratio: capMBs / discardMBs},
	)
	bin, err := buildPitr(ctx, env)
	if err != nil {
		return nil, err
	}
	var rss1k float64
	for _, n := range []int{1000, 10000} {
		rss, peak, took, err := agentRSS(ctx, env, bin, n)
		if err != nil {
			return nil, fmt.Errorf("%d regions: %w", n, err)
		}
		env.Logf("%d regions initialized in %s; RSS %.0f MiB, peak %.0f MiB", n, took.Round(time.Millisecond), rss, peak)
		r := Row{Name: fmt.Sprintf("agent RSS, %dk regions subscribed", n/1000), Value: rss, Unit: "MiB"}
		if n == 1000 {
			rss1k = rss
		} else {
			r.Baseline, r.Ratio = "1k regions", rss/rss1k
		}
		rows = append(rows, r, Row{Name: fmt.Sprintf("agent peak RSS, %dk regions", n/1000), Value: peak, Unit: "MiB"})
	}
	return rows, nil
}

// captureThroughput loads about total key+value bytes into a one-store
// playground, then times the incremental scan of all of it twice: into a
// consumer that discards everything, and through an agent into Parquet
// files on file:// (until the flush holding the last row is stored).
func captureThroughput(ctx context.Context, env *Env, total int64) (capMBs, discardMBs float64, err error) {
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1, MinTSInterval: 200 * time.Millisecond})
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	loadTS, err := p.PD.TS(ctx)
	if err != nil {
		return 0, 0, err
	}
	var logical int64
	rng := rand.New(rand.NewSource(1))
	val := make([]byte, 400)
	n := 0
	for logical < total {
		batch := make([]mvcc.IngestEntry, 0, 4096)
		for i := 0; i < 4096; i++ {
			rng.Read(val[:200]) // half random: compresses like real rows, not like zeros
			k := []byte(fmt.Sprintf("cap/%010d", n))
			n++
			batch = append(batch, mvcc.IngestEntry{Key: k, StartTS: loadTS, CommitTS: loadTS, Value: append([]byte(nil), val...)})
			logical += int64(len(k) + len(val))
		}
		if err := p.Engine.Ingest(batch); err != nil {
			return 0, 0, err
		}
	}
	for i := 1; i < 16; i++ { // 16 regions: scans run in parallel, as on a real store
		if _, err := p.Cluster.Split([]byte(fmt.Sprintf("cap/%010d", i*n/16))); err != nil {
			return 0, 0, err
		}
	}
	env.Logf("loaded %d rows, %d MiB of keys+values, 16 regions", n, logical>>20)

	// Limit: the same scan, discarded.
	start := time.Now()
	if _, err := cdc.DiscardConsumer(ctx, p.StoreAddrs()[1], p.Cluster.Regions(), cdc.DiscardOptions{
		ClusterID: p.Cluster.ID(), CheckpointTS: loadTS - 1, UntilInitialized: true,
	}); err != nil {
		return 0, 0, fmt.Errorf("discard consumer: %w", err)
	}
	discardMBs = float64(logical) / 1e6 / time.Since(start).Seconds()

	// The agent.
	url := "file://" + filepath.Join(env.Tmp, "capture-storage")
	if err := putTask(ctx, p.PDAddr(), "bench", url, loadTS-1, []byte("cap/"), []byte("cap0")); err != nil {
		return 0, 0, err
	}
	a, err := agent.New(agent.Config{
		PDAddrs: []string{p.PDAddr()}, TiKVAddr: p.StoreAddrs()[1], DataDir: filepath.Join(env.Tmp, "capture-data"),
		ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: 2 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr}),
	})
	if err != nil {
		return 0, 0, err
	}
	defer a.Close()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
	}()
	cli, err := agentClient(a.Addr())
	if err != nil {
		return 0, 0, err
	}
	// Done when every region is initialized and resolved past the load,
	// and a flush holding it all is stored.
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if time.Now().After(deadline) {
			return 0, 0, errors.New("capture did not finish in 10 minutes")
		}
		pr, err := cli.GetProgress(ctx, &pitrpb.GetProgressRequest{Task: "bench"})
		if err == nil && len(pr.Regions) == 16 && allPast(pr.Regions, loadTS) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling progress
	}
	el := time.Since(start)
	st, err := storage.Open(ctx, url)
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	var stored, files int64
	err = st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		b, err := st.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		m, err := logfile.DecodeMeta(b)
		if err != nil {
			return err
		}
		for _, f := range m.Files {
			stored += f.LogicalBytes
			files++
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if stored < logical {
		return 0, 0, fmt.Errorf("storage holds %d logical bytes, loaded %d", stored, logical)
	}
	env.Logf("agent: %d MiB in %d files in %s", stored>>20, files, el.Round(time.Millisecond))
	return float64(logical) / 1e6 / el.Seconds(), discardMBs, nil
}

// allPast reports whether every region's flushed checkpoint is at or past ts.
func allPast(rs []*pitrpb.RegionProgress, ts uint64) bool {
	for _, r := range rs {
		if r.Checkpoint < ts {
			return false
		}
	}
	return true
}

func agentClient(addr string) (pitrpb.AgentClient, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	return pitrpb.NewAgentClient(conn), nil
}

func putTask(ctx context.Context, pdAddr, name, url string, startTS uint64, start, end []byte) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{pdAddr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	b, err := task.EncodeRecord(&pitrpb.TaskRecord{
		Info:       &pitrpb.TaskInfo{Name: name, StartTs: startTS, Ranges: []*pitrpb.KeyRange{{StartKey: start, EndKey: end}}},
		StorageUrl: url, State: pitrpb.TaskState_TASK_STATE_RUNNING,
	})
	if err != nil {
		return err
	}
	_, err = cli.Put(ctx, task.Key(name), string(b))
	return err
}

// agentRSS runs a `pitr agent` process against a one-store playground split
// into n regions (one small row each), waits until every region is
// initialized and flushed, lets it run a few flush intervals, and returns
// its resident and peak resident memory in MiB.
func agentRSS(ctx context.Context, env *Env, bin string, n int) (rss, peak float64, took time.Duration, err error) {
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	if err != nil {
		return 0, 0, 0, err
	}
	defer p.Close()
	ts, err := p.PD.TS(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	key := func(i int) []byte { return []byte(fmt.Sprintf("rss/%08d", i)) }
	batch := make([]mvcc.IngestEntry, n)
	for i := range batch {
		batch[i] = mvcc.IngestEntry{Key: key(i), StartTS: ts, CommitTS: ts, Value: []byte("value")}
	}
	if err := p.Engine.Ingest(batch); err != nil {
		return 0, 0, 0, err
	}
	for i := 1; i < n; i++ {
		if _, err := p.Cluster.Split(key(i)); err != nil {
			return 0, 0, 0, err
		}
	}
	name := fmt.Sprintf("rss%d", n)
	if err := putTask(ctx, p.PDAddr(), name, "file://"+filepath.Join(env.Tmp, name), ts-1, []byte("rss/"), []byte("rss0")); err != nil {
		return 0, 0, 0, err
	}
	conf := filepath.Join(env.Tmp, name+".toml")
	if err := os.WriteFile(conf, []byte("flush-interval = \"1s\"\n"), 0o600); err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	a, err := startAgent(env, bin, p, name, "--config", conf)
	if err != nil {
		return 0, 0, 0, err
	}
	defer a.stop()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.PDAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, 0, 0, err
	}
	defer cli.Close()
	deadline := time.Now().Add(5 * time.Minute)
	addr, err := a.registered(ctx, cli, deadline)
	if err != nil {
		return 0, 0, 0, err
	}
	ac, err := agentClient(addr)
	if err != nil {
		return 0, 0, 0, err
	}
	for {
		if err := a.alive(); err != nil {
			return 0, 0, 0, err
		}
		if time.Now().After(deadline) {
			return 0, 0, 0, a.fail(errors.New("regions not all flushed within 5 minutes"))
		}
		if pr, err := ac.GetProgress(ctx, &pitrpb.GetProgressRequest{Task: name}); err == nil && len(pr.Regions) == n && allPast(pr.Regions, ts) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling progress
	}
	took = time.Since(start)
	time.Sleep(3 * time.Second) // steady state: a few flushes and resolved-ts rounds
	rss, peak, err = procMemMiB(a.pid())
	if err != nil {
		return 0, 0, 0, a.fail(err)
	}
	return rss, peak, took, nil
}

// buildPitr builds the pitr binary into env.Tmp.
func buildPitr(ctx context.Context, env *Env) (string, error) {
	bin := filepath.Join(env.Tmp, "pitr")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pitr").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/pitr: %v\n%s", err, out)
	}
	return bin, nil
}

// agentProc is a `pitr agent` process beside store 1 of a playground.
type agentProc struct {
	cmd     *exec.Cmd
	exited  chan error
	logPath string
	logf    *os.File
}

// startAgent starts `pitr agent` beside store 1 of p, its data dir and log
// named after name in env.Tmp; extra flags follow the defaults.
func startAgent(env *Env, bin string, p *playground.Playground, name string, extra ...string) (*agentProc, error) {
	logPath := filepath.Join(env.Tmp, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"agent", "--pd", p.PDAddr(), "--tikv", p.StoreAddrs()[1],
		"--data-dir", filepath.Join(env.Tmp, name+"-data"), "--listen", "127.0.0.1:0", "--http", "-", "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	a := &agentProc{cmd: cmd, exited: make(chan error, 1), logPath: logPath, logf: logf}
	go func() { a.exited <- cmd.Wait() }()
	return a, nil
}

func (a *agentProc) pid() int { return a.cmd.Process.Pid }

// alive returns an error (with the log's tail) once the process has exited.
func (a *agentProc) alive() error {
	select {
	case err := <-a.exited:
		a.exited <- err
		return a.fail(fmt.Errorf("agent exited: %v", err))
	default:
		return nil
	}
}

// fail adds the tail of the agent's log to err.
func (a *agentProc) fail(err error) error {
	b, _ := os.ReadFile(a.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("%w; agent log:\n%s", err, b)
}

// registered waits for the agent of store 1 in etcd and returns its gRPC
// address.
func (a *agentProc) registered(ctx context.Context, cli *clientv3.Client, deadline time.Time) (string, error) {
	for {
		if err := a.alive(); err != nil {
			return "", err
		}
		if time.Now().After(deadline) {
			return "", a.fail(errors.New("agent not registered in time"))
		}
		if resp, err := cli.Get(ctx, task.AgentKey(1)); err == nil && len(resp.Kvs) > 0 {
			var rec pitrpb.AgentRecord
			if err := protobuf.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
				return "", a.fail(err)
			}
			return rec.Addr, nil
		}
		time.Sleep(100 * time.Millisecond) // polling etcd
	}
}

// stop sends SIGTERM and waits for the exit (SIGKILL after 30s).
func (a *agentProc) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.exited:
		a.exited <- err
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		a.exited <- <-a.exited
	}
	_ = a.logf.Close()
}

// procMemMiB reads VmRSS and VmHWM of a process (Linux).
func procMemMiB(pid int) (rss, peak float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read process memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return rss, peak, nil
}
