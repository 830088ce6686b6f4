// Package pipeline is the whole of pitr running on a testkit cluster: a
// backup task (file storage), an agent per store and coordinators, all in
// this process, with the checkpoint wait (and its diagnosis on a stall), an
// offline verify and restores into fresh targets. It is testkit's upper
// layer: it imports agent and coordinator, which testkit does not.
package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/testkit"
)

// Options configures Start. The defaults are the end-to-end tests': 1 s
// flushes, two coordinators with 0.5 s ticks, 2 s sessions and locks of
// dead transactions resolved after 3 s.
type Options struct {
	// Task names the backup task (default "e2e").
	Task string
	// Cluster is the source (see testkit.Options); it must start empty
	// unless HoldsData.
	Cluster testkit.Options
	// Setup, when set, runs on the source before the task, the agents and
	// the coordinators start (a split the agents should find at start, or
	// the data a real cluster holds when its backup starts).
	Setup func(c *testkit.Cluster)
	// HoldsData: the task ranges hold data when the task starts (Setup
	// wrote it), so restores need a snapshot (Snapshot).
	HoldsData bool
	// Agent adjusts the configuration of a store's agent.
	Agent func(store uint64, cfg *agent.Config)
	// Coordinators is how many coordinators run (0: two).
	Coordinators int
	// Coordinator adjusts the configuration of the i-th coordinator.
	Coordinator func(i int, cfg *coordinator.Config)
}

// Pipeline is a running source, task, agents and coordinators. Everything
// stops when the TB ends: gracefully, and a part whose Run then returns an
// error fails the TB.
type Pipeline struct {
	*testkit.Cluster
	Task       string
	StorageURL string
	StartTS    uint64
	// Coordinators are all that were started, killed ones included.
	Coordinators []*coordinator.Coordinator

	o     Options
	dir   string
	store storage.Storage

	mu     sync.Mutex
	agents map[uint64]*part
	coords []*part
}

// part is an agent or a coordinator running in the background.
type part struct {
	name   string
	cancel context.CancelFunc
	done   chan error
	close  func() error
}

// Start starts the source, the task on it, an agent per store and the
// coordinators; a failure is fatal.
func Start(tb testkit.TB, ctx context.Context, o Options) *Pipeline {
	tb.Helper()
	if o.Task == "" {
		o.Task = "e2e"
	}
	if o.Coordinators == 0 {
		o.Coordinators = 2
	}
	p := &Pipeline{Task: o.Task, o: o, dir: tb.TempDir(), agents: map[uint64]*part{}}
	p.Cluster = testkit.StartCluster(tb, ctx, o.Cluster)
	if o.Setup != nil {
		o.Setup(p.Cluster)
	}
	p.StorageURL = "file://" + filepath.Join(p.dir, "backup")
	rec, err := task.StartTask(ctx, p.Clients.Etcd, p.Clients.PD, task.StartOptions{
		Name: o.Task, StorageURL: p.StorageURL, EmptyAt: task.EmptyAtTiKV(p.KV),
	})
	if err != nil {
		tb.Fatalf("start task: %v", err)
	}
	if rec.GetInfo().GetStartedEmpty() == o.HoldsData {
		tb.Fatalf("task %s: started empty %v, want %v", o.Task, rec.GetInfo().GetStartedEmpty(), !o.HoldsData)
	}
	p.StartTS = rec.GetInfo().GetStartTs()

	tb.Cleanup(p.stopAll)
	for _, id := range p.P.StoreIDs() {
		p.StartAgent(id)
	}
	for i := 0; i < o.Coordinators; i++ {
		cfg := coordinator.Config{PDAddrs: []string{p.P.PDAddr()}, TLS: p.TLS, ID: fmt.Sprintf("c%d", i),
			HTTPAddr: "-", SessionTTL: 2 * time.Second, TickInterval: 500 * time.Millisecond, Logger: p.Log,
			ResolveLocksAfter: 3 * time.Second, Locks: coordinator.NewLockResolver(p.KV.KVStore), KV: p.KV.KVStore}
		if o.Coordinator != nil {
			o.Coordinator(i, &cfg)
		}
		c, err := coordinator.New(cfg)
		if err != nil {
			tb.Fatalf("new coordinator %d: %v", i, err)
		}
		p.Coordinators = append(p.Coordinators, c)
		p.coords = append(p.coords, p.run("coordinator "+c.ID(), c.Run, c.Close))
	}
	return p
}

// run runs a part until its context ends; an error before that fails the
// TB (from the part's goroutine: Errorf).
func (p *Pipeline) run(name string, run func(context.Context) error, closeFn func() error) *part {
	ctx, cancel := context.WithCancel(p.Ctx)
	r := &part{name: name, cancel: cancel, done: make(chan error, 1), close: closeFn}
	go func() {
		err := run(ctx)
		if err != nil && ctx.Err() == nil {
			p.TB.Errorf("%s: %v", name, err)
			err = nil // reported; stop need not report it again
		}
		r.done <- err
	}()
	return r
}

// kill stops a part as a kill would: no drain, no last flush; what its Run
// returns is not checked.
func (r *part) kill() {
	r.cancel()
	_ = r.close()
	<-r.done
}

// stop ends a part's Run and waits for it: a graceful stop, which must
// return no error.
func (r *part) stop(tb testkit.TB) {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			tb.Errorf("%s stopped with: %v", r.name, err)
		}
	case <-time.After(15 * time.Second):
		tb.Errorf("%s did not stop within 15s", r.name)
	}
	_ = r.close()
}

func (p *Pipeline) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.coords {
		if c != nil {
			c.stop(p.TB)
		}
	}
	for _, a := range p.agents {
		a.stop(p.TB)
	}
}

// StartAgent starts (or, after KillAgent, restarts) the agent of a store,
// in this process, with a fresh data directory.
func (p *Pipeline) StartAgent(store uint64) {
	p.TB.Helper()
	cfg := agent.Config{
		PDAddrs: []string{p.P.PDAddr()}, TLS: p.AgentTLS(), TiKVAddr: p.P.StoreAddrs()[store],
		DataDir:    filepath.Join(p.TB.TempDir(), fmt.Sprintf("agent-%d", store)),
		ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: time.Second, Logger: p.Log,
	}
	if p.o.Agent != nil {
		p.o.Agent(store, &cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		p.TB.Fatalf("new agent of store %d: %v", store, err)
	}
	r := p.run(fmt.Sprintf("agent of store %d", store), a.Run, a.Close)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.agents[store] = r
}

// KillAgent kills a store's agent: no drain, no last flush.
func (p *Pipeline) KillAgent(store uint64) {
	p.mu.Lock()
	r := p.agents[store]
	delete(p.agents, store)
	p.mu.Unlock()
	if r != nil {
		r.kill()
	}
}

// KillLeader kills the leading coordinator, if one leads now, and returns
// its index in Coordinators.
func (p *Pipeline) KillLeader() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, c := range p.Coordinators {
		if p.coords[i] != nil && c.IsLeader() {
			p.coords[i].kill()
			p.coords[i] = nil
			return i, true
		}
	}
	return -1, false
}

// AgentKill is a chaos fault: a random store's agent is killed and a new
// one takes its place.
func (p *Pipeline) AgentKill(at float64) testkit.Fault {
	return testkit.Fault{Name: "agent kill", At: at, Inject: func(_ context.Context, rng *rand.Rand) (bool, error) {
		stores := p.P.StoreIDs()
		id := stores[rng.Intn(len(stores))]
		p.KillAgent(id)
		p.StartAgent(id)
		return true, nil
	}}
}

// LeaderKill is a chaos fault: the leading coordinator is killed (it waits
// for one to lead).
func (p *Pipeline) LeaderKill(at float64) testkit.Fault {
	return testkit.Fault{Name: "coordinator kill", At: at, Inject: func(context.Context, *rand.Rand) (bool, error) {
		_, ok := p.KillLeader()
		return ok, nil
	}}
}

// Snapshot takes a snapshot backup into the task's root at ts (0: now),
// through the agents that run (snapshot.EtcdAgents), as pitr backup full
// does; o's Storage, StorageURL, PD, KV and Agents are filled in.
func (p *Pipeline) Snapshot(ts uint64, o snapshot.Options) *snapshot.Result {
	p.TB.Helper()
	agents, err := snapshot.NewEtcdAgents(p.Ctx, p.Clients.Etcd, p.TLS)
	if err != nil {
		p.TB.Fatalf("agents: %v", err)
	}
	defer agents.Close()
	o.Storage, o.StorageURL, o.PD, o.KV, o.Agents, o.BackupTS = p.Backup(), p.StorageURL, p.Clients.PD, p.KV.KVStore, agents, ts
	if o.Logger == nil {
		o.Logger = p.Log
	}
	res, err := snapshot.Run(p.Ctx, o)
	if err != nil {
		p.TB.Fatalf("snapshot at %d: %v", ts, err)
	}
	return res
}

// Checkpoint is the task's checkpoint in etcd.
func (p *Pipeline) Checkpoint() (uint64, error) {
	return task.Checkpoint(p.Ctx, p.Clients.Etcd, p.Task)
}

// StoredCheckpoint reads the task's checkpoint/global from its storage.
func (p *Pipeline) StoredCheckpoint() (uint64, error) {
	b, err := p.Backup().Get(p.Ctx, logfile.CheckpointPath)
	if err != nil {
		return 0, err
	}
	gc, err := logfile.DecodeCheckpoint(b)
	return gc.GetTs(), err
}

// WaitCheckpoint waits until the task's checkpoint reaches ts and returns
// it. On a timeout it fails the TB with the task's status (the slowest
// ranges and why) and the locks the source's CDC trackers hold at or below
// the checkpoint: what a stall needs to be understood.
func (p *Pipeline) WaitCheckpoint(ts uint64, limit time.Duration) uint64 {
	p.TB.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		cp, err := p.Checkpoint()
		if err == nil && cp >= ts {
			// The coordinator writes checkpoint/global, which restore and
			// verify read, in the background after etcd's: a checkpoint
			// that jumped (a lock resolved) is in etcd a moment before it
			// is in storage. The storage's is returned, once it is there.
			var stored uint64
			if stored, err = p.StoredCheckpoint(); err == nil && stored >= ts {
				return stored
			}
			err = fmt.Errorf("etcd has %d, storage %d (%v)", cp, stored, err)
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			if views, verr := task.ReadViews(p.Ctx, p.Clients.Etcd, p.Task, time.Now()); verr == nil {
				// The views as JSON: the slowest ranges and why, the
				// agents, the lock resolutions (pitr task status --json).
				js, _ := json.MarshalIndent(views, "", "  ")
				b.Write(js)
			}
			b.WriteString("\nLocks the source's CDC trackers hold at or below the checkpoint:\n")
			p.P.DumpTrackedLocks(&b, cp+1)
			p.TB.Fatalf("the checkpoint (%d, %v) did not reach %d within %s; status:\n%s", cp, err, ts, limit, b.String())
		}
		select {
		case <-p.Ctx.Done():
			p.TB.Fatalf("wait for the checkpoint: %v", p.Ctx.Err())
		case <-tick.C:
		}
	}
}

// Backup opens the backup's storage root, once.
func (p *Pipeline) Backup() storage.Storage {
	p.TB.Helper()
	if p.store == nil {
		s, err := storage.Open(p.Ctx, p.StorageURL)
		if err != nil {
			p.TB.Fatalf("open the backup: %v", err)
		}
		p.store = s
		p.TB.Cleanup(func() { _ = s.Close() })
	}
	return p.store
}

// Verify checks the backup offline up to cp.
func (p *Pipeline) Verify(cp uint64) *restore.VerifyResult {
	p.TB.Helper()
	vr, err := restore.Verify(p.Ctx, p.Backup(), restore.VerifyOptions{RestoreTS: cp})
	if err != nil {
		p.TB.Fatalf("verify up to %d: %v", cp, err)
	}
	return vr
}
