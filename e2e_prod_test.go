package pitr_test

import (
	"context"
	"math/rand"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
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
	runFor := 20 * time.Second
	if os.Getenv("PITR_LONG") == "1" {
		runFor = 60 * time.Second
	}
	const wantPoints = 12
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := startPipeline(t, ctx, "prod", playground.Config{Stores: 3, Replicas: 2,
		TiKVVersion: tikvVersion, GCInterval: time.Second, GCLifeTime: time.Second,
		// PD's balance-leader runs too (merges wait PD's 1h split-merge
		// interval, as in PD).
		BalanceInterval: 2 * time.Second,
		MinTSInterval:   200 * time.Millisecond})
	src, kv := p.src, p.kv

	// Two workloads: bank transfers (a total that never changes) and a
	// mixed one with deletes, values over 255 B and a few over 1 MiB.
	bank := &workload.Bank{Client: kv, Prefix: "b/", Accounts: 200, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	mixed := &workload.Mixed{Client: kv, Prefix: "m/", Keys: 300, LargeRatio: 0.02}
	var st workload.Stats
	var mst workload.MixedStats
	wctx, stopWork := context.WithCancel(ctx)
	workErr := make(chan error, 2)
	go func() { workErr <- bank.Run(wctx, 4, &st) }()
	go func() { workErr <- mixed.Run(wctx, 2, &mst) }()

	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var points []restorePoint
	sample := func() {
		ts, err := coordinator.GetTS(ctx, p.cl.PD)
		require.NoError(t, err)
		total, _, err := bank.Sum(ctx, ts)
		require.NoError(t, err)
		require.Equal(t, bank.Total(), total, "bank total at %d", ts)
		// The source is read around the leaked lock, never across it: a
		// reader would resolve it.
		points = append(points, restorePoint{ts: ts, want: readAll(t, kv, ts, "b/", "b0", "m/", "m0")})
	}

	t.Logf("TiKV %q: workload runs for %s", tikvVersion, runFor)
	began := time.Now()
	step := time.NewTicker(500 * time.Millisecond)
	defer step.Stop()
	stores := src.StoreIDs()
	var leaked, moved, pdRestarted, coordKilled bool
	var leakedTS uint64
	// One restore point in each twelfth of the run, at a random moment.
	nextPoint := func(k int) time.Time {
		return began.Add(time.Duration((float64(k) + rng.Float64()) * float64(runFor) / wantPoints))
	}
	sampleAt := nextPoint(0)
	// The run lasts runFor, and longer if a fault could not be injected
	// yet (no free store for a peer, no leader to kill at that moment).
	for i := 0; time.Since(began) < runFor || !(leaked && moved && pdRestarted && coordKilled); i++ {
		require.Less(t, time.Since(began), runFor+30*time.Second, "faults injected: leak %v, move %v, pd restart %v, coordinator kill %v",
			leaked, moved, pdRestarted, coordKilled)
		<-step.C
		frac := float64(time.Since(began)) / float64(runFor)
		switch {
		case i%3 == 0 && len(src.Cluster.Regions()) < 16:
			_, _ = src.Cluster.Split(bank.Key(rng.Intn(bank.Accounts)))
		case i%3 == 1:
			rs := src.Cluster.Regions()
			_ = src.Cluster.TransferLeader(rs[rng.Intn(len(rs))].ID, stores[rng.Intn(len(stores))])
		}
		switch {
		case !leaked && frac > 0.15:
			// A client dies between prewrite and commit, on a key nobody
			// reads again.
			var err error
			leakedTS, err = workload.LeakLock(ctx, kv, []byte("leak/orphan"), time.Second)
			require.NoError(t, err)
			leaked = true
		case !moved && frac > 0.3:
			moved = movePeer(t, src)
		case !pdRestarted && frac > 0.5:
			require.NoError(t, src.RestartPD(ctx))
			pdRestarted = true
		case !coordKilled && frac > 0.7:
			coordKilled = p.killLeader()
		}
		if len(points) < wantPoints-1 && time.Now().After(sampleAt) {
			sample()
			sampleAt = nextPoint(len(points))
		}
	}
	stopWork()
	require.NoError(t, <-workErr)
	require.NoError(t, <-workErr)
	require.True(t, leaked && moved && pdRestarted && coordKilled, "every fault was injected")
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
	cp := waitCheckpoint(t, ctx, p.cl.Etcd, "prod", last, 120*time.Second, p.src)
	t.Logf("%d transfers, %d mixed txns; checkpoint %d; %d regions", st.Committed.Load(), mst.Committed.Load(), cp, len(src.Cluster.Regions()))

	p.verify(cp)

	sort.Slice(points, func(i, j int) bool { return points[i].ts < points[j].ts })
	for i, pt := range points {
		// A target already split into several regions.
		got, rows := p.restoreInto(i, pt.ts, "b/account/00000050", "b/account/00000150", "m/", "m/key/00000200")
		requireSame(t, pt.want, got, pt.ts)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored)", i, pt.ts, len(got), rows)
	}
}

// movePeer moves one peer of a region whose leader stays put to the store
// that has none, so the region's ConfVer changes and nothing else.
func movePeer(t *testing.T, p *playground.Playground) bool {
	t.Helper()
	for _, r := range p.Cluster.Regions() {
		for _, to := range p.StoreIDs() {
			if r.PeerOn(to) != nil {
				continue
			}
			for _, from := range p.StoreIDs() {
				if from == r.Leader || r.PeerOn(from) == nil {
					continue
				}
				require.NoError(t, p.Cluster.MovePeer(r.ID, from, to))
				return true
			}
		}
	}
	return false
}
