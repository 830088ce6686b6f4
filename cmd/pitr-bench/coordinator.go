package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
)

func init() {
	register(Section{Name: "coordinator", Run: benchCoordinator})
}

// benchCoordinator measures one checkpoint computation over 100k regions
// (the leader's per-tick CPU cost) beside the time to sort 100k region keys,
// the floor of any sort+sweep; then the checkpoint lag a steady client-go
// workload sees with real agents and a coordinator on the playground,
// beside flush interval + tick: a region's checkpoint moves once per flush
// and the global one once per tick after that, so a steady lag swings up to
// about that bound.
func benchCoordinator(ctx context.Context, env *Env) ([]Row, error) {
	const regions = 100_000
	reps := syntheticRegions(regions, 3)
	keys := make([][]byte, len(reps))
	sortKeys := func() {
		for i := range reps {
			keys[i] = reps[i].Start
		}
		slices.SortFunc(keys, bytes.Compare)
	}
	var res coordinator.Result
	compute := func() { res = coordinator.Compute(coordinator.Input{Previous: 1, Reports: reps}) }
	// Interleaved, so both see the same machine load.
	ms := medianMs(15, sortKeys, compute)
	sortMs, computeMs := ms[0], ms[1]
	if !res.Covered || res.Used != regions {
		return nil, fmt.Errorf("compute: covered=%v used=%d, want a full cover of %d regions", res.Covered, res.Used, regions)
	}
	// 10% stale copies (regions just split): the overlap path.
	stale := slices.Clone(reps)
	for i := 0; i < regions; i += 10 {
		r := reps[i]
		r.EpochVersion, r.Checkpoint = 1, 1
		stale = append(stale, r)
	}
	staleMs := medianMs(15, func() { res = coordinator.Compute(coordinator.Input{Previous: 1, Reports: stale}) })[0]
	if res.Stale != regions/10 {
		return nil, fmt.Errorf("compute with stale reports: %d stale, want %d", res.Stale, regions/10)
	}
	rows := []Row{
		{Name: "sort 100k region keys (floor)", Value: sortMs, Unit: "ms"},
		{Name: "checkpoint computation, 100k regions", Value: computeMs, Unit: "ms/tick", Baseline: "sort", Ratio: computeMs / sortMs},
		{Name: "  with 10% stale overlapping reports", Value: staleMs, Unit: "ms/tick", Baseline: "sort", Ratio: staleMs / sortMs},
	}

	lagRows, err := benchLag(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("lag: %w", err)
	}
	return append(rows, lagRows...), nil
}

// medianMs runs the fns in turn n times (after one warm-up round) and
// returns the median duration of each, in ms.
func medianMs(n int, fns ...func()) []float64 {
	ds := make([][]float64, len(fns))
	for round := -1; round < n; round++ {
		for f, fn := range fns {
			start := time.Now()
			fn()
			if round >= 0 {
				ds[f] = append(ds[f], float64(time.Since(start).Microseconds())/1000)
			}
		}
	}
	out := make([]float64, len(fns))
	for f := range ds {
		sort.Float64s(ds[f])
		out[f] = ds[f][n/2]
	}
	return out
}

// syntheticRegions tiles the key space with n TiDB-like region keys on the
// given stores, checkpoints spread over 1000..1000+n, shuffled as the
// agents' answers interleave.
func syntheticRegions(n, stores int) []coordinator.Report {
	key := func(i int) []byte {
		if i == 0 {
			return nil
		}
		return []byte(fmt.Sprintf("t\x80\x00\x00\x00\x00\x00\x00\x2a_r%012d", i*1000))
	}
	reps := make([]coordinator.Report, n)
	for i := range reps {
		reps[i] = coordinator.Report{StoreID: uint64(i%stores + 1), RegionID: uint64(i + 1), EpochVersion: 5,
			Start: key(i), Checkpoint: 1000 + uint64(i*7919%n)}
		if i+1 < n {
			reps[i].End = key(i + 1)
		}
	}
	rnd := rand.New(rand.NewSource(1))
	rnd.Shuffle(n, func(i, j int) { reps[i], reps[j] = reps[j], reps[i] })
	return reps
}

// benchLag runs a playground with 3 stores, an agent per store, one
// coordinator and a bank workload, and samples the checkpoint lag. Then,
// in the same run, it leaks a lock (a client that died between prewrite
// and commit, on a key nobody reads) and times how long the lock holds the
// checkpoint: the coordinator resolves locks in ranges lagging more than
// resolve-locks-after, so the lock goes once the range lags that much, plus
// one tick to see it, the resolved-ts interval (1 s) for TiKV to move, one
// flush for the agent and one tick for the coordinator; client-go judges
// TTLs with a low-resolution ts (up to 2 s old).
func benchLag(ctx context.Context, env *Env) (rows []Row, err error) {
	quietClientGo()
	// The pipeline is the tests' harness; its TB logs to the bench's log and
	// turns a failure into this section's error.
	err = testkit.Run(testkit.RunOptions{Log: logWriter{env}, Dir: env.Tmp}, func(tb testkit.TB) error {
		rows, err = measureLag(tb, ctx, env)
		return err
	})
	return rows, err
}

// logWriter sends the harness's lines to the bench's log.
type logWriter struct{ env *Env }

func (w logWriter) Write(b []byte) (int, error) {
	w.env.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func measureLag(tb testkit.TB, ctx context.Context, env *Env) ([]Row, error) {
	const (
		flushInterval = agent.DefaultFlushInterval
		tick          = coordinator.DefaultTickInterval
		warmup        = 10 * time.Second
		measure       = 30 * time.Second
		// Above the steady lag (flush + tick + resolved-ts interval), below
		// the 60 s default to keep the bench short.
		resolveAfter = 15 * time.Second
		leakTTL      = 3 * time.Second // TiDB's default lock TTL; below resolveAfter
		resolvedTS   = time.Second
		ttlClock     = 2 * time.Second
	)
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: hclog.DefaultOutput})
	bank := &workload.Bank{Prefix: "lag/", Accounts: 1000, Initial: 1000}
	p := pipeline.Start(tb, ctx, pipeline.Options{Task: "lag",
		Cluster: testkit.Options{Component: "pitr-bench", Playground: playground.Config{Stores: 3, GCInterval: -1, Logger: log}},
		// Four regions for the accounts, before the agents start.
		Setup: func(c *testkit.Cluster) {
			for _, k := range []int{250, 500, 750} {
				if _, err := c.P.Cluster.Split(bank.Key(k)); err != nil {
					tb.Fatalf("split: %v", err)
				}
			}
		},
		Agent: func(id uint64, cfg *agent.Config) {
			cfg.FlushInterval, cfg.Logger = flushInterval, log.Named(fmt.Sprintf("agent-%d", id))
		},
		Coordinators: 1,
		Coordinator: func(_ int, cfg *coordinator.Config) {
			cfg.TickInterval, cfg.ResolveLocksAfter, cfg.SessionTTL, cfg.ID = tick, resolveAfter, 0, ""
		},
	})
	bank.Client = p.KV
	if err := bank.Init(ctx); err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return ignoreCanceled(bank.Run(ctx, 4, &st)) })
	// stopped reports a part of the pipeline or the workload that stopped.
	stopped := func() error {
		if ended, err := work.Ended(); ended {
			return fmt.Errorf("the workload stopped: %v", err)
		}
		if tb.Failed() {
			return errors.New("a part of the pipeline stopped")
		}
		return nil
	}

	// Warm up (initial scans, first flushes), then sample every 200 ms.
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var lags []float64
	end := time.Now().Add(measure)
	for time.Now().Before(end) {
		cp, err := p.Checkpoint()
		if err != nil {
			return nil, err
		}
		lags = append(lags, time.Since(keyspace.Time(cp)).Seconds())
		if err := stopped(); err != nil {
			return nil, err
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	committed := st.Committed.Load()
	sort.Float64s(lags)
	p50, p99, worst := lags[len(lags)/2], lags[len(lags)*99/100], lags[len(lags)-1]
	bound := (flushInterval + tick).Seconds()
	env.Logf("lag: %d samples over %s, bank committed %d txns (%.0f txn/s); p50 %.2fs p99 %.2fs max %.2fs",
		len(lags), measure, committed, float64(committed)/(warmup+measure).Seconds(), p50, p99, worst)
	rows := []Row{
		{Name: "flush interval + tick (expected max lag)", Value: bound, Unit: "s"},
		{Name: "checkpoint lag p50, 3 stores + agents + bank", Value: p50, Unit: "s", Baseline: "bound", Ratio: p50 / bound},
		{Name: "checkpoint lag p99 (acceptance: ≤ 10 s)", Value: p99, Unit: "s", Baseline: "bound", Ratio: p99 / bound},
	}

	// Lock liveness, with the bank still running.
	// The 3 s: the resolved-ts interval and client-go's TTL clock.
	limit := resolveAfter + 2*tick + flushInterval + resolvedTS + ttlClock
	created := time.Now()
	leakTS, err := workload.LeakLock(ctx, p.KV, []byte("lag/orphan"), leakTTL)
	if err != nil {
		return nil, err
	}
	for {
		cp, err := p.Checkpoint()
		if err != nil {
			return nil, err
		}
		if cp > leakTS {
			break
		}
		if time.Since(created) > 3*limit {
			return nil, fmt.Errorf("lock liveness: the checkpoint is still held at %d by the leaked lock %d after %s", cp, leakTS, time.Since(created).Round(time.Second))
		}
		if err := stopped(); err != nil {
			return nil, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	held := time.Since(created).Seconds()
	env.Logf("lock liveness: a leaked lock (TTL %s) held the checkpoint for %.2fs; limit %s", leakTTL, held, limit)
	return append(rows,
		Row{Name: "lock liveness limit (resolve-locks-after 15s + 2 ticks + flush + 3s)", Value: limit.Seconds(), Unit: "s"},
		Row{Name: "lock liveness: a leaked lock holds the checkpoint", Value: held, Unit: "s", Baseline: "limit", Ratio: held / limit.Seconds()},
	), nil
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
