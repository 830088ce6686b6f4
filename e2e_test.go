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

// TestExactRestoreEndToEnd is the acceptance check of I4 on the whole
// pipeline: real agents and coordinators capture a client-go bank workload
// while regions split, leaders move, a store restarts, an agent is killed
// and the leading coordinator fails over, with GC running on the source;
// then, for 20 random T in [start_ts, checkpoint], a restore into a fresh
// cluster (its GC running too) must read exactly what the source reads at
// T, key for key. Nothing here resolves the locks the cut-off transfers
// leave: the coordinator does.
func TestExactRestoreEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end restore test skipped in -short mode")
	}
	runFor := 20 * time.Second
	if os.Getenv("PITR_LONG") == "1" {
		runFor = 60 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := startPipeline(t, ctx, "e2e", playground.Config{Stores: 3, MinTSInterval: 200 * time.Millisecond})
	src := p.src

	// The workload, with splits and leader moves all along.
	bank := &workload.Bank{Client: p.kv, Prefix: "e2e/", Accounts: 300, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	var st workload.Stats
	wctx, stopWork := context.WithCancel(ctx)
	workErr := make(chan error, 1)
	go func() { workErr <- bank.Run(wctx, 6, &st) }()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	t.Logf("workload runs for %s", runFor)
	began := time.Now()
	step := time.NewTicker(500 * time.Millisecond)
	stores := src.StoreIDs()
	var (
		storeStopped, storeRestarted, agentKilled, coordKilled bool
		stoppedStore                                           uint64
		stoppedAt                                              time.Time
	)
	for i := 0; time.Since(began) < runFor; i++ {
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
		case !storeStopped && frac > 0.25:
			stoppedStore = stores[rng.Intn(len(stores))]
			require.NoError(t, src.StopStore(stoppedStore))
			storeStopped, stoppedAt = true, time.Now()
		case storeStopped && !storeRestarted && time.Since(stoppedAt) > 2*time.Second:
			require.NoError(t, src.StartStore(stoppedStore))
			storeRestarted = true
		case !agentKilled && frac > 0.45:
			// Killed: no drain, no final flush; a new agent takes its place.
			id := stores[rng.Intn(len(stores))]
			p.killAgent(id)
			p.startAgent(id)
			agentKilled = true
		case !coordKilled && frac > 0.6:
			coordKilled = p.killLeader()
		}
	}
	step.Stop()
	stopWork()
	require.NoError(t, <-workErr)
	require.True(t, storeRestarted && agentKilled && coordKilled, "every fault was injected")

	endTS, err := coordinator.GetTS(ctx, p.cl.PD)
	require.NoError(t, err)
	total, _, err := bank.Sum(ctx, endTS)
	require.NoError(t, err)
	require.Equal(t, bank.Total(), total)
	cp := waitCheckpoint(t, ctx, p.cl.Etcd, "e2e", endTS, 90*time.Second, p.src)
	t.Logf("%d transfers; checkpoint %d; %d regions", st.Committed.Load(), cp, len(src.Cluster.Regions()))
	p.verify(cp)

	// 20 restore points: both ends and 18 random ones in between. The
	// source's GC life time is the default 10 min, so it still reads at T.
	points := []uint64{p.startTS, cp}
	for len(points) < 20 {
		points = append(points, p.startTS+uint64(rng.Int63n(int64(cp-p.startTS))))
	}
	sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
	for i, T := range points {
		got, rows := p.restoreInto(i, T)
		requireSame(t, readAll(t, p.kv, T), got, T)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored)", i, T, len(got), rows)
	}
}
