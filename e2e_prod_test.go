package pitr_test

import (
	"context"
	"math/rand"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
)

// TestProductionEndToEnd is I4 on the whole pipeline against a playground
// as strict as TiKV, with every fault of the production-correctness issue
// at once: GC runs on the source (at pitr's safepoint: a GC life time of one
// second) and on every restore target; the workload deletes keys and writes
// values over 255 B and over 1 MiB besides the bank's transfers; a client
// leaks a lock on a key nobody reads again and the test never resolves
// locks itself (the coordinator must); a peer moves (ConfVer changes); PD
// restarts (regions have no leader until they heartbeat); regions split,
// leaders move (by the test and by PD's balance-leader); the leading
// coordinator is killed. It runs at TiKV 7.1 (no
// Deregister, one subscription per region per stream) and at the newest
// behaviour. Restore points are read from the source while the workload
// runs, before the source's GC may reclaim them, and each is restored into
// a fresh target already split into several regions, then compared key for
// key.
func TestProductionEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end restore test skipped in -short mode")
	}
	for _, v := range []string{"7.1.0", ""} {
		name := "tikv-" + v
		if v == "" {
			name = "tikv-newest"
		}
		t.Run(name, func(t *testing.T) { runProduction(t, v) })
	}
}

// restorePoint is a ts and what the source read at it.
type restorePoint struct {
	ts   uint64
	want map[string][]byte
}

func runProduction(t *testing.T, tikvVersion string) {
	runFor := runLength()
	const wantPoints = 12
	ctx, p, rng := startE2E(t, pipeline.Options{Task: "prod", Cluster: testkit.Options{Playground: playground.Config{
		Stores: 3, Replicas: 2, TiKVVersion: tikvVersion, GCInterval: time.Second, GCLifeTime: time.Second,
		// PD's balance-leader runs too (merges wait PD's 1h split-merge
		// interval, as in PD).
		BalanceInterval: 2 * time.Second,
		MinTSInterval:   200 * time.Millisecond}}})
	kv := p.KV

	// Two workloads: bank transfers (a total that never changes) and a
	// mixed one with deletes, values over 255 B and a few over 1 MiB.
	bank := &workload.Bank{Client: kv, Prefix: "b/", Accounts: 200, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	mixed := &workload.Mixed{Client: kv, Prefix: "m/", Keys: 300, LargeRatio: 0.02}
	var st workload.Stats
	var mst workload.MixedStats
	works := []*testkit.Workload{
		p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 4, &st) }),
		p.StartWorkload(func(ctx context.Context) error { return mixed.Run(ctx, 2, &mst) }),
	}

	var points []restorePoint
	sample := func() {
		ts := p.TS()
		total, _, err := bank.Sum(ctx, ts)
		require.NoError(t, err)
		require.Equal(t, bank.Total(), total, "bank total at %d", ts)
		// The source is read around the leaked lock, never across it: a
		// reader would resolve it.
		points = append(points, restorePoint{ts: ts, want: p.ReadAll(ts, "b/", "b0", "m/", "m0")})
	}

	t.Logf("TiKV %q: workload runs for %s", tikvVersion, runFor)
	var leakedTS uint64
	leak := testkit.Fault{Name: "leaked lock", At: 0.15, Inject: func(ctx context.Context, _ *rand.Rand) (bool, error) {
		// A client dies between prewrite and commit, on a key nobody
		// reads again.
		var err error
		leakedTS, err = workload.LeakLock(ctx, kv, []byte("leak/orphan"), time.Second)
		return err == nil, err
	}}
	// One restore point in each twelfth of the run, at a random moment.
	nextPoint := func(k int) time.Duration {
		return time.Duration((float64(k) + rng.Float64()) * float64(runFor) / wantPoints)
	}
	sampleAt := nextPoint(0)
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: runFor,
		// The run lasts runFor, and longer if a fault could not be
		// injected yet (no free store for a peer, no leader to kill at
		// that moment).
		Grace:   30 * time.Second,
		Routine: []testkit.Action{p.Split(16, bankKey(bank)), p.MoveLeader(), nil},
		Faults:  []testkit.Fault{leak, p.MovePeer(0.3), p.RestartPD(0.5), p.LeaderKill(0.7)},
		OnStep: func(_ int, elapsed time.Duration) error {
			if len(points) < wantPoints-1 && elapsed >= sampleAt {
				sample()
				sampleAt = nextPoint(len(points))
			}
			return nil
		},
		Watch: works,
	}
	require.NoError(t, chaos.Run(ctx), "every fault was injected")
	for _, w := range works {
		require.NoError(t, w.Stop())
	}
	require.Positive(t, mst.Deletes.Load(), "the mixed workload deleted keys")
	require.Positive(t, mst.Medium.Load(), "the mixed workload wrote values over 255 B")
	require.Positive(t, mst.Large.Load(), "the mixed workload wrote values over 1 MiB")
	for len(points) < wantPoints {
		sample()
	}
	last := points[len(points)-1].ts

	// Nobody resolves locks here: the leaked lock and whatever the cut-off
	// transactions left must be resolved by the coordinator.
	t.Logf("leaked lock at start_ts %d; waiting for the checkpoint to pass it and the last restore point", leakedTS)
	cp := p.WaitCheckpoint(last, 120*time.Second)
	t.Logf("%d transfers, %d mixed txns; checkpoint %d; %d regions", st.Committed.Load(), mst.Committed.Load(), cp, len(p.P.Cluster.Regions()))

	p.Verify(cp)

	sort.Slice(points, func(i, j int) bool { return points[i].ts < points[j].ts })
	for i, pt := range points {
		// A target already split into several regions.
		r := p.RestoreInto(i, pt.ts, pipeline.RestoreOptions{
			SplitAt: []string{"b/account/00000050", "b/account/00000150", "m/", "m/key/00000200"}})
		testkit.RequireSame(t, pt.want, r.Read, pt.ts)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored)", i, pt.ts, len(r.Read), r.Result.Rows)
	}
}
