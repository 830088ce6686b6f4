package coordinator_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
)

// The end-to-end tests of the coordinator are an external test package:
// they run on testkit/pipeline, which imports coordinator.

// startWithAgents starts a 2-store source split in two regions, one led
// by each store, then a task, a real agent beside every store (300 ms
// flushes; regionInterval 0: the default PD scan period) and one
// coordinator "A" ticking every 200 ms. The agents and the coordinator
// stop, and must have run without error, when the test ends.
func startWithAgents(t *testing.T, ctx context.Context, name string, regionInterval time.Duration) (*pipeline.Pipeline, *cluster.Region) {
	t.Helper()
	var right *cluster.Region
	p := pipeline.Start(t, ctx, pipeline.Options{Task: name,
		Cluster: testkit.Options{Component: "pitr-coordinator-test", Playground: playground.Config{Stores: 2, GCInterval: -1}},
		// Two regions, one led by each store, so both agents report; made
		// before the agents start, so they find them at start.
		Setup: func(c *testkit.Cluster) {
			halves, err := c.P.Cluster.Split([]byte("k010"))
			require.NoError(t, err)
			right = halves[1]
			other := c.P.StoreIDs()[0]
			if other == right.Leader {
				other = c.P.StoreIDs()[1]
			}
			require.NoError(t, c.P.Cluster.TransferLeader(right.ID, other))
		},
		Agent: func(_ uint64, cfg *agent.Config) {
			cfg.FlushInterval, cfg.RegionInterval = 300*time.Millisecond, regionInterval
			cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Error})
		},
		Coordinators: 1,
		Coordinator: func(_ int, cfg *coordinator.Config) {
			cfg.ID, cfg.TickInterval, cfg.PollTimeout = "A", 200*time.Millisecond, time.Second
			cfg.SafePointTTL, cfg.HTTPAddr = time.Hour, "127.0.0.1:0"
			cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Name: "A"})
		},
	})
	return p, right
}

// checkpointOf reads a task's etcd checkpoint.
func checkpointOf(t *testing.T, p *pipeline.Pipeline) uint64 {
	t.Helper()
	cp, err := p.Checkpoint()
	require.NoError(t, err)
	return cp
}

// write commits one key and returns its commit ts.
func write(t *testing.T, ctx context.Context, p *pipeline.Pipeline, key string) uint64 {
	t.Helper()
	txn, err := p.KV.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte(key), []byte("v")))
	require.NoError(t, txn.Commit(ctx))
	return txn.CommitTS()
}

// TestEndToEndWithAgents: real agents beside the playground's stores, a
// coordinator and client-go writes: the global checkpoint passes the ts of
// the last write, in etcd and in storage, and the status covers every
// range with the agents up.
func TestEndToEndWithAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground with agents")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, _ := startWithAgents(t, ctx, "e2e", 0)
	cli := p.Clients.Etcd
	var lastTS uint64
	for i := 0; i < 20; i++ {
		lastTS = write(t, ctx, p, fmt.Sprintf("k%03d", i))
	}
	require.Eventually(t, func() bool { return checkpointOf(t, p) >= lastTS }, 30*time.Second, 100*time.Millisecond,
		"the checkpoint passes the last commit")

	var v task.TaskView
	require.Eventually(t, func() bool {
		views, err := task.ReadViews(ctx, cli, "e2e", time.Now())
		require.NoError(t, err)
		v = views[0]
		return v.Status != nil && v.Status.Checkpoint >= lastTS
	}, 10*time.Second, 100*time.Millisecond)
	require.True(t, v.Status.Covered)
	require.Zero(t, v.Status.UncoveredRanges)
	require.Len(t, v.Status.Agents, len(p.P.StoreAddrs()))
	for _, a := range v.Status.Agents {
		require.Equal(t, task.AgentUp, a.State, "%+v", a)
		require.Positive(t, a.Regions, "each store leads a region: %+v", a)
	}
	require.GreaterOrEqual(t, v.Status.Regions, 2)
	require.True(t, p.Coordinators[0].IsLeader())

	s := p.Backup()
	require.Eventually(t, func() bool {
		b, err := s.Get(ctx, logfile.CheckpointPath)
		require.NoError(t, err)
		gc, err := logfile.DecodeCheckpoint(b)
		require.NoError(t, err)
		return gc.GetTs() >= lastTS
	}, 10*time.Second, 100*time.Millisecond, "checkpoint/global follows")
	// GC is held at a checkpoint of this term, moved at most every 10
	// ticks (R9): at or below the checkpoint (I3), and it catches up.
	require.Eventually(t, func() bool {
		sps, err := p.P.PD.ServiceSafePoints(ctx)
		require.NoError(t, err)
		sp, held := sps["pitr-e2e"]
		cp, err := task.Checkpoint(ctx, cli, "e2e")
		require.NoError(t, err)
		require.True(t, held)
		require.LessOrEqual(t, sp, cp, "I3")
		return sp >= lastTS
	}, 10*time.Second, 50*time.Millisecond, "GC held at the checkpoint")
}

// TestLeaderMoveRescan: TiKV tells only the store that loses a leader
// (NotLeader); the agent of the store that gains it hears nothing and
// would find the region at its next periodic PD scan. The coordinator sees
// the range uncovered and asks the agents to re-read regions at once, so
// the checkpoint moves on long before that scan (here 60 s away).
func TestLeaderMoveRescan(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground with agents")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p, right := startWithAgents(t, ctx, "move", time.Minute)
	stores := p.P.StoreIDs()
	ts := write(t, ctx, p, "k001")
	require.Eventually(t, func() bool { return checkpointOf(t, p) >= ts }, 30*time.Second, 100*time.Millisecond,
		"the checkpoint passes a first commit")

	// The right region's leader moves to the store that leads the left
	// one; that store's agent is not told.
	r, err := p.P.Cluster.RegionByID(right.ID)
	require.NoError(t, err)
	to := stores[0]
	if to == r.Leader {
		to = stores[1]
	}
	require.NoError(t, p.P.Cluster.TransferLeader(right.ID, to))
	moved := time.Now()
	ts = write(t, ctx, p, "k020")
	require.Eventually(t, func() bool { return checkpointOf(t, p) >= ts }, 20*time.Second, 100*time.Millisecond,
		"the checkpoint passes a commit in the region whose leader moved, well before the next periodic scan")
	t.Logf("checkpoint passed the commit %.1fs after the leader moved", time.Since(moved).Seconds())
}
