package pitr_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/certs"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// pipeline is the harness of the root end-to-end tests: a source
// playground with a backup task (file storage), an agent per store and two
// coordinators, all in this process. Everything stops at the test's end.
func TestMain(m *testing.M) {
	// The PD client and client-go log every connection step through
	// pingcap/log, to stdout unless routed: warnings and errors to stderr.
	level := hclog.Warn
	if os.Getenv("PITR_DEBUG") != "" {
		level = hclog.Debug
	}
	connector.RouteClientLogs(hclog.New(&hclog.LoggerOptions{Name: "client", Level: level, Output: os.Stderr}))
	os.Exit(m.Run())
}

type pipeline struct {
	t          *testing.T
	ctx        context.Context
	dir        string
	log        hclog.Logger
	src        *playground.Playground
	kv         *txnkv.Client
	cl         *coordinator.Clients
	tls        connector.TLS // the source's (and the targets') TLS; zero: plaintext
	tlsDir     string
	task       string
	storageURL string
	startTS    uint64

	store storage.Storage // the backup's root, opened by backup()

	wg        sync.WaitGroup
	agents    map[uint64]runningAgent
	coords    []*coordinator.Coordinator
	coordStop []context.CancelFunc
}

type runningAgent struct {
	a    *agent.Agent
	stop context.CancelFunc
}

// startPipeline starts the source with cfg (Dir and Logger are set here),
// starts the task on it (it must start empty), an agent per store (1 s
// flushes) and two coordinators (0.5 s ticks, 2 s sessions, locks of dead
// transactions resolved after 3 s).
func startPipeline(t *testing.T, ctx context.Context, name string, cfg playground.Config) *pipeline {
	t.Helper()
	p := &pipeline{t: t, ctx: ctx, dir: t.TempDir(), task: name, agents: map[uint64]runningAgent{}}
	p.log = hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr})
	cfg.Dir, cfg.Logger = filepath.Join(p.dir, "src"), p.log
	p.tlsDir = cfg.TLSDir
	var err error
	p.src, err = playground.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.src.Close() })
	pdAddr := p.src.PDAddr()
	// client-go first: it rewrites pd/client globals that PD clients read.
	p.tls = connector.TLS{}
	if f := p.src.ClientTLS(); f.CA != "" {
		p.tls = connector.TLS{CA: f.CA, Cert: f.Cert, Key: f.Key}
	}
	p.kv = newKV(t, pdAddr, p.tls)
	t.Cleanup(func() { _ = p.kv.Close() })
	p.cl, err = coordinator.Connect(ctx, connector.Config{PDAddrs: []string{pdAddr}, TLS: p.tls, Timeout: 10 * time.Second, Component: "e2e"})
	require.NoError(t, err)
	t.Cleanup(p.cl.Close)

	p.storageURL = "file://" + filepath.Join(p.dir, "backup")
	rec, err := coordinator.StartTask(ctx, p.cl.Etcd, p.cl.PD, coordinator.StartOptions{
		Name: name, StorageURL: p.storageURL, EmptyAt: coordinator.EmptyAtTiKV(p.kv),
	})
	require.NoError(t, err)
	require.True(t, rec.GetInfo().GetStartedEmpty())
	p.startTS = rec.GetInfo().GetStartTs()

	t.Cleanup(p.wg.Wait) // runs after the stops below (cleanups run last first)
	for _, id := range p.src.StoreIDs() {
		p.startAgent(id)
	}
	t.Cleanup(func() {
		for _, r := range p.agents {
			r.stop()
			_ = r.a.Close()
		}
	})
	for i := 0; i < 2; i++ {
		c, err := coordinator.New(coordinator.Config{PDAddrs: []string{pdAddr}, TLS: p.tls, ID: fmt.Sprintf("c%d", i),
			HTTPAddr: "-", SessionTTL: 2 * time.Second, TickInterval: 500 * time.Millisecond, Logger: p.log,
			ResolveLocksAfter: 3 * time.Second, Locks: coordinator.NewLockResolver(p.kv.KVStore)})
		require.NoError(t, err)
		p.coords = append(p.coords, c)
		p.coordStop = append(p.coordStop, p.goRun("coordinator", c.Run))
	}
	t.Cleanup(func() {
		for i, c := range p.coords {
			p.coordStop[i]()
			_ = c.Close()
		}
	})
	return p
}

// goRun runs a part until its context ends; an error before that fails the
// test.
func (p *pipeline) goRun(name string, run func(context.Context) error) context.CancelFunc {
	cctx, cancel := context.WithCancel(p.ctx)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := run(cctx); err != nil && cctx.Err() == nil {
			p.t.Errorf("%s: %v", name, err)
		}
	}()
	return cancel
}

// startAgent starts (or, after killAgent, restarts) the agent of a store.
func (p *pipeline) startAgent(store uint64) {
	// An agent serves and dials: with TLS it needs a certificate with both
	// usages (the playground's server certificate has them).
	atls := p.tls
	if p.tls.Enabled() {
		c := certs.PathsIn(p.tlsDir)
		atls = connector.TLS{CA: c.CA, Cert: c.Cert, Key: c.Key}
	}
	a, err := agent.New(agent.Config{
		PDAddrs: []string{p.src.PDAddr()}, TLS: atls, TiKVAddr: p.src.StoreAddrs()[store],
		DataDir:    filepath.Join(p.dir, fmt.Sprintf("agent-%d", store)),
		ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: time.Second, Logger: p.log,
	})
	require.NoError(p.t, err)
	p.agents[store] = runningAgent{a, p.goRun("agent", a.Run)}
}

// killAgent stops a store's agent as a kill would: no drain, no last flush.
func (p *pipeline) killAgent(store uint64) {
	r := p.agents[store]
	r.stop()
	_ = r.a.Close()
	delete(p.agents, store)
}

// killLeader kills the leading coordinator, if one leads now.
func (p *pipeline) killLeader() bool {
	for i, c := range p.coords {
		if c.IsLeader() {
			p.coordStop[i]()
			_ = c.Close()
			return true
		}
	}
	return false
}

func newKV(t *testing.T, pdAddr string, tls connector.TLS) *txnkv.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli, err := connector.KV(ctx, connector.Config{PDAddrs: []string{pdAddr}, TLS: tls, Timeout: 10 * time.Second})
	require.NoError(t, err)
	return cli
}

// waitCheckpoint waits until the task's checkpoint reaches ts and returns
// it; on a timeout it logs the task's status (the slowest ranges and why)
// before failing.
func waitCheckpoint(t *testing.T, ctx context.Context, cli *clientv3.Client, name string, ts uint64, limit time.Duration, src ...*playground.Playground) uint64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		cp, err := task.Checkpoint(ctx, cli, name)
		if err == nil && cp >= ts {
			return cp
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			if views, verr := coordinator.ReadViews(ctx, cli, name, time.Now()); verr == nil {
				_ = coordinator.RenderViews(&b, views, true)
			}
			for _, pg := range src {
				b.WriteString("\nLocks the source's CDC trackers hold at or below the checkpoint:\n")
				pg.DumpTrackedLocks(&b, cp+1)
			}
			t.Fatalf("the checkpoint (%d, %v) did not reach %d within %s; status:\n%s", cp, err, ts, limit, b.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readAll reads the keys of a cluster at ts in [start, end) for each pair
// of bounds (none: every key).
func readAll(t *testing.T, c *txnkv.Client, ts uint64, bounds ...string) map[string][]byte {
	t.Helper()
	if len(bounds) == 0 {
		bounds = []string{"\x00", ""}
	}
	out := map[string][]byte{}
	for i := 0; i+1 < len(bounds); i += 2 {
		var end []byte
		if bounds[i+1] != "" {
			end = []byte(bounds[i+1])
		}
		it, err := c.GetSnapshot(ts).Iter([]byte(bounds[i]), end)
		require.NoError(t, err)
		for it.Valid() {
			out[string(it.Key())] = append([]byte(nil), it.Value()...)
			require.NoError(t, it.Next())
		}
		it.Close()
	}
	return out
}

// requireSame checks two reads at ts key for key.
func requireSame(t *testing.T, want, got map[string][]byte, ts uint64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		require.True(t, ok, "key %q missing at T=%d", k, ts)
		require.Equal(t, len(v), len(g), "key %q at T=%d: value length", k, ts)
		require.True(t, string(v) == string(g), "key %q at T=%d: values differ", k, ts)
	}
	require.Equal(t, len(want), len(got), "extra keys at T=%d", ts)
}

// restoreInto restores T into a fresh 3-store target with GC running (a GC
// life time of 1 s, so its safepoint passes every restored version), split
// first at splitAt, and returns what it reads afterwards and the versions
// restored. The target holds versions ≤ T only, so it is read at its
// current ts: its GC, back on once the restore ended, may be past T.
func (p *pipeline) restoreInto(i int, T uint64, splitAt ...string) (map[string][]byte, int64) {
	t := p.t
	// With TLS, the target serves the source's certificates (the same CA).
	dst, err := playground.Start(p.ctx, playground.Config{Stores: 3, GCInterval: time.Second, GCLifeTime: time.Second, Logger: p.log,
		TLSDir: p.tlsDir})
	require.NoError(t, err)
	defer dst.Close()
	for _, k := range splitAt {
		_, err := dst.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	backup := p.backup()
	res, err := restore.Run(p.ctx, restore.Options{Source: backup, PDAddrs: []string{dst.PDAddr()}, TLS: p.tls, RestoreTS: T,
		ProgressFile: filepath.Join(p.dir, fmt.Sprintf("progress-%d", i)), Logger: p.log})
	require.NoError(t, err, "restore to T=%d", T)
	dkv := newKV(t, dst.PDAddr(), p.tls)
	defer dkv.Close()
	now, err := dkv.CurrentTimestamp("global")
	require.NoError(t, err)
	return readAll(t, dkv, now), res.Rows
}

// verify checks the backup offline up to the checkpoint cp.
func (p *pipeline) verify(cp uint64) {
	_, err := restore.Verify(p.ctx, p.backup(), restore.VerifyOptions{RestoreTS: cp})
	require.NoError(p.t, err)
}

// backup opens the backup's storage root, once.
func (p *pipeline) backup() storage.Storage {
	if p.store == nil {
		s, err := storage.Open(p.ctx, p.storageURL)
		require.NoError(p.t, err)
		p.store = s
		p.t.Cleanup(func() { _ = s.Close() })
	}
	return p.store
}
