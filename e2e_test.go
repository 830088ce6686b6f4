package pitr_test

import (
	"context"
	"math/rand"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
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
	p := pipeline.Start(t, ctx, pipeline.Options{Task: "e2e",
		Cluster: testkit.Options{Playground: playground.Config{Stores: 3, MinTSInterval: 200 * time.Millisecond}}})
	rng := testkit.Rand(t)

	// The workload, with splits and leader moves all along.
	bank := &workload.Bank{Client: p.KV, Prefix: "e2e/", Accounts: 300, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 6, &st) })
	t.Logf("workload runs for %s", runFor)
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: runFor,
		Routine: []testkit.Action{p.Split(16, bankKey(bank)), p.MoveLeader(), nil},
		Faults: []testkit.Fault{
			p.RestartStore(0.25, 2*time.Second),
			// Killed: no drain, no final flush; a new agent takes its place.
			p.AgentKill(0.45),
			p.LeaderKill(0.6),
		},
		Watch: []*testkit.Workload{work},
	}
	require.NoError(t, chaos.Run(ctx), "every fault was injected")
	require.NoError(t, work.Stop())

	endTS := p.TS()
	total, _, err := bank.Sum(ctx, endTS)
	require.NoError(t, err)
	require.Equal(t, bank.Total(), total)
	cp := p.WaitCheckpoint(endTS, 90*time.Second)
	t.Logf("%d transfers; checkpoint %d; %d regions", st.Committed.Load(), cp, len(p.P.Cluster.Regions()))
	p.Verify(cp)

	// 20 restore points: both ends and 18 random ones in between. The
	// source's GC life time is the default 10 min, so it still reads at T.
	points := randomPoints(rng, p.StartTS, cp, 20)
	for i, T := range points {
		r := p.RestoreInto(i, T, pipeline.RestoreOptions{})
		testkit.RequireSame(t, p.ReadAll(T), r.Read, T)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored)", i, T, len(r.Read), r.Result.Rows)
	}
}

// bankKey picks a random account's key, to split at.
func bankKey(b *workload.Bank) func(*rand.Rand) []byte {
	return func(rng *rand.Rand) []byte { return b.Key(rng.Intn(b.Accounts)) }
}

// randomPoints is n restore points in [from, to], sorted: both ends and
// n-2 random ones in between.
func randomPoints(rng *rand.Rand, from, to uint64, n int) []uint64 {
	points := []uint64{from, to}
	for len(points) < n {
		points = append(points, from+uint64(rng.Int63n(int64(to-from))))
	}
	sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
	return points
}
