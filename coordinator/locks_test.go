package coordinator

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/task"
)

// lockEnv is a playground store with an agent, a task "locks" and one
// coordinator that resolves locks after a short threshold.
type lockEnv struct {
	c         *cluster
	kv        *txnkv.Client
	co        *coord
	threshold time.Duration
	tick      time.Duration
	flush     time.Duration
	limit     time.Duration // how long a dead lock may hold the checkpoint
}

func startLockEnv(t *testing.T) *lockEnv {
	t.Helper()
	e := &lockEnv{threshold: time.Second, tick: 200 * time.Millisecond, flush: 300 * time.Millisecond}
	// A lock is found lagging at most one tick after the threshold; the
	// checkpoint passes it once TiKV's resolved ts moved (the playground's
	// resolved-ts interval, TiKV's 1 s), the agent flushed and the
	// coordinator ticked again. client-go judges TTLs with its
	// low-resolution ts, refreshed every 2 s.
	e.limit = e.threshold + 2*e.tick + e.flush + time.Second + 2*time.Second
	e.c = startClusterStores(t, 1, 0, true)
	e.kv = e.c.kv
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a, err := agent.New(agent.Config{PDAddrs: []string{e.c.p.PDAddr()}, TiKVAddr: e.c.p.StoreAddrs()[e.c.p.StoreIDs()[0]],
		DataDir: filepath.Join(t.TempDir(), "agent"), ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: e.flush,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Error})})
	require.NoError(t, err)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-done)
		_ = a.Close()
	})
	startTask(t, e.c, e.c.etcd(t), "locks", nil)
	e.co = e.c.startCoordinator(t, "A", func(cfg *Config) {
		cfg.TickInterval = e.tick
		cfg.ResolveLocksAfter = e.threshold
		cfg.Locks = NewLockResolver(e.kv.KVStore)
	})
	return e
}

// commit writes key in a transaction of its own and returns its commit ts.
func (e *lockEnv) commit(t *testing.T, key string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	txn, err := e.kv.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte(key), []byte("v")))
	require.NoError(t, txn.Commit(ctx))
	return txn.CommitTS()
}

// waitPassed waits until the checkpoint reaches ts and returns when it saw
// it there.
func (e *lockEnv) waitPassed(t *testing.T, ts uint64, within time.Duration, msg string) time.Time {
	t.Helper()
	require.Eventually(t, func() bool { return checkpoint(t, e.co.etcd, "locks") >= ts }, within, 50*time.Millisecond, msg)
	return time.Now()
}

// locksAt lists the locks on key with start_ts ≤ maxVersion without
// resolving them (a ScanLock, not a read).
func (e *lockEnv) locksAt(t *testing.T, key []byte) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	end := append(append([]byte{}, key...), 0)
	locks, err := tikv.StoreProbe{KVStore: e.kv.KVStore}.ScanLocks(ctx, key, end, ^uint64(0))
	require.NoError(t, err)
	return len(locks)
}

// lockStatus reads the task's published lock resolutions.
func (e *lockEnv) lockStatus(t *testing.T) *task.LockStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	views, err := task.ReadViews(ctx, e.co.etcd, "locks", time.Now())
	require.NoError(t, err)
	if views[0].Status == nil {
		return nil
	}
	return views[0].Status.Locks
}

func orZero(l *task.LockStatus) *task.LockStatus {
	if l == nil {
		return &task.LockStatus{}
	}
	return l
}

func counter(t *testing.T, co *coord, name, task string) float64 {
	t.Helper()
	mfs, err := co.gatherer.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "task" && l.GetValue() == task {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestLockResolution: a client that died between prewrite and commit
// leaves a lock on a key nobody reads; TiKV never resolves it, so it pins
// the region's resolved ts and the global checkpoint. The coordinator
// resolves locks on ranges lagging more than the threshold: the dead lock
// goes (after its TTL), a live transaction's lock stays and its commit
// succeeds. Nothing in the test reads the locked keys.
func TestLockResolution(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground with an agent")
	}
	e := startLockEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.waitPassed(t, e.commit(t, "warm"), 30*time.Second, "the checkpoint follows commits")

	t.Run("dead client's lock", func(t *testing.T) {
		created := time.Now()
		startTS, err := workload.LeakLock(ctx, e.kv, []byte("orphan/1"), 200*time.Millisecond)
		require.NoError(t, err)
		after := e.commit(t, "after/1")
		passed := e.waitPassed(t, after, 60*time.Second, "the checkpoint passes the leaked lock")
		held := passed.Sub(created)
		t.Logf("leaked lock %d held the checkpoint for %s (limit %s + load)", startTS, held, e.limit)
		require.Less(t, held, e.limit+5*time.Second)
		require.Zero(t, e.locksAt(t, []byte("orphan/1")), "the lock was rolled back")

		l := e.lockStatus(t)
		require.NotNil(t, l)
		require.GreaterOrEqual(t, l.Runs, int64(1))
		require.GreaterOrEqual(t, l.Locks, int64(1))
		require.NotZero(t, l.LastUnixMs)
		require.GreaterOrEqual(t, counter(t, e.co, "pitr_coordinator_lock_resolutions_total", "locks"), 1.0)
		require.GreaterOrEqual(t, counter(t, e.co, "pitr_coordinator_locks_found_total", "locks"), 1.0)
	})

	t.Run("dead client's lock waits for its TTL", func(t *testing.T) {
		const ttl = 5 * time.Second
		before := orZero(e.lockStatus(t))
		created := time.Now()
		startTS, err := workload.LeakLock(ctx, e.kv, []byte("orphan/2"), ttl)
		require.NoError(t, err)
		after := e.commit(t, "after/2")
		// The coordinator tries, finds the lock alive and leaves it.
		require.Eventually(t, func() bool {
			l := e.lockStatus(t)
			return l != nil && l.LastUnixMs > before.LastUnixMs && l.LastLiveMs > 0
		}, 30*time.Second, 50*time.Millisecond, "a resolution ran and left the live lock")
		if time.Since(created) < ttl-500*time.Millisecond {
			require.Equal(t, 1, e.locksAt(t, []byte("orphan/2")), "the lock stays until its TTL ends")
			require.LessOrEqual(t, checkpoint(t, e.co.etcd, "locks"), startTS)
		}
		passed := e.waitPassed(t, after, 60*time.Second, "the checkpoint passes the lock once its TTL ended")
		held := passed.Sub(created)
		t.Logf("lock %d with TTL %s held the checkpoint for %s (limit TTL + %s + load)", startTS, ttl, held, e.limit)
		require.GreaterOrEqual(t, held, ttl)
		require.Less(t, held, ttl+e.limit+5*time.Second)
	})

	t.Run("dead lock behind tied regions", func(t *testing.T) {
		// TiKV reports resolved ts in batches of 8, 32, … regions, each at
		// the batch's minimum (cdc endpoint.rs on_min_ts): the region the
		// lock pins drags 7 others down to the same checkpoint. Past
		// DefaultMaxSlow ties, the one holding the lock is the last by
		// start key and not among the slowest the status lists; the
		// coordinator must resolve it all the same.
		for i := 1; i <= 9; i++ {
			_, err := e.c.p.Cluster.Split([]byte(fmt.Sprintf("tie/%d", i)))
			require.NoError(t, err)
		}
		e.waitPassed(t, e.commit(t, "tie/0/warm"), 30*time.Second, "the checkpoint follows commits after the splits")
		created := time.Now()
		startTS, err := workload.LeakLock(ctx, e.kv, []byte("tie/9/orphan"), 200*time.Millisecond)
		require.NoError(t, err)
		after := e.commit(t, "after/3")
		passed := e.waitPassed(t, after, 60*time.Second, "the checkpoint passes the lock behind the tied regions")
		held := passed.Sub(created)
		t.Logf("leaked lock %d held the checkpoint for %s (limit %s + load)", startTS, held, e.limit)
		require.Less(t, held, e.limit+5*time.Second)
		require.Zero(t, e.locksAt(t, []byte("tie/9/orphan")), "the lock was rolled back")
	})

	t.Run("live transaction", func(t *testing.T) {
		const ttl = 1500 * time.Millisecond
		before := orZero(e.lockStatus(t))
		txn, err := workload.Prewrite(ctx, e.kv, []byte("live/1"), []byte("v"), ttl)
		require.NoError(t, err)
		began := time.Now()
		// Its client is alive: it heartbeats, pushing the TTL ahead.
		hbCtx, stopHB := context.WithCancel(ctx)
		var wg sync.WaitGroup
		hbErr := make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(300 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-hbCtx.Done():
					hbErr <- nil
					return
				case <-tk.C:
				}
				if err := txn.HeartBeat(hbCtx, time.Since(began)+ttl); err != nil && hbCtx.Err() == nil {
					hbErr <- err
					return
				}
			}
		}()
		// Several resolutions run on the lagging range and leave it.
		require.Eventually(t, func() bool {
			l := e.lockStatus(t)
			return l != nil && l.Runs >= before.Runs+3 && l.LastUnixMs > before.LastUnixMs && l.LastLiveMs > 0 &&
				time.Since(began) > e.threshold+3*time.Second
		}, 60*time.Second, 100*time.Millisecond, "resolutions ran while the transaction lived")
		require.LessOrEqual(t, checkpoint(t, e.co.etcd, "locks"), txn.StartTS, "a live transaction holds the checkpoint")
		stopHB()
		wg.Wait()
		require.NoError(t, <-hbErr)
		commitTS, err := txn.Commit(ctx)
		require.NoError(t, err, "the live transaction was not rolled back")
		e.waitPassed(t, commitTS, 30*time.Second, "the checkpoint passes the committed transaction")
	})
}

// TestLockKeeper: which ranges a tick resolves, with which maxVersion, and
// how often.
func TestLockKeeper(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	fr := &fakeResolver{calls: make(chan resolveCall, 16), locks: 2}
	c := &Coordinator{cfg: Config{ResolveLocksAfter: 10 * time.Second, TickInterval: time.Second, Locks: fr}, log: hclog.NewNullLogger()}
	var err error
	c.met, err = newMetrics(prometheus.NewRegistry())
	require.NoError(t, err)
	tm := &term{c: c, log: c.log, stop: make(chan struct{})}
	defer tm.wg.Wait()
	defer close(tm.stop)

	old := keyspace.FromTime(now.Add(-time.Minute))
	young := keyspace.FromTime(now.Add(-2 * time.Second))
	before := tm.lagBefore(now)
	require.Equal(t, keyspace.FromTime(now.Add(-10*time.Second)), before)
	// Seven regions tie at the oldest checkpoint (one TiKV resolved-ts
	// batch), more than the status lists; one is young; a hole has no
	// report. Every lagging one is resolved, clipped to the task.
	var reps []Report
	for i := 0; i < 7; i++ {
		reps = append(reps, Report{Start: []byte{'b' + byte(i)}, End: []byte{'c' + byte(i)}, Checkpoint: old, RegionID: uint64(i + 1)})
	}
	reps = append(reps, Report{Start: []byte("i"), End: []byte("j"), Checkpoint: young, RegionID: 8})
	reps = append(reps, Report{Start: []byte("j"), End: nil, Checkpoint: old, RegionID: 9})
	task := []keyspace.Range{rg("c", "x")}
	res := Compute(Input{Ranges: task, Reports: reps, LagBefore: before})
	require.Len(t, res.Slowest, DefaultMaxSlow)
	require.Equal(t, []keyspace.Range{rg("c", "i"), rg("j", "x")}, res.Lagging)

	tm.resolveLocks("t", res.Lagging, before, now)
	require.Equal(t, resolveCall{rg("c", "i"), before}, <-fr.calls)
	require.Equal(t, resolveCall{rg("j", "x"), before}, <-fr.calls)
	require.Eventually(t, func() bool {
		st := tm.resolveLocks("t", nil, before, now)
		return st != nil && st.LastUnixMs != 0
	}, 5*time.Second, 10*time.Millisecond)
	st := tm.resolveLocks("t", nil, before, now)
	require.Equal(t, int64(1), st.Runs)
	require.Equal(t, int64(2*fr.locks), st.Locks)
	require.Equal(t, "63", st.LastStartKey)
	require.Equal(t, "78", st.LastEndKey)
	require.Equal(t, 2, st.LastRanges)

	// Within half the threshold: no second run; after it: one.
	tm.resolveLocks("t", res.Lagging, before, now.Add(4*time.Second))
	tm.resolveLocks("t", res.Lagging[:1], before, now.Add(6*time.Second))
	require.Equal(t, resolveCall{rg("c", "i"), before}, <-fr.calls)
	select {
	case call := <-fr.calls:
		t.Fatalf("unexpected resolution %+v", call)
	case <-time.After(100 * time.Millisecond):
	}
}

type resolveCall struct {
	r          keyspace.Range
	maxVersion uint64
}

type fakeResolver struct {
	calls chan resolveCall
	locks int
}

func (f *fakeResolver) ResolveLocks(_ context.Context, r keyspace.Range, maxVersion uint64) (LockScan, error) {
	f.calls <- resolveCall{r, maxVersion}
	return LockScan{Regions: 1, Locks: f.locks}, nil
}
