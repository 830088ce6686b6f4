package pitr_test

import (
	"context"
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
	runFor := runLength()
	ctx, p, rng := startE2E(t, pipeline.Options{Task: "e2e",
		Cluster: testkit.Options{Playground: playground.Config{Stores: 3, MinTSInterval: 200 * time.Millisecond}}})

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
