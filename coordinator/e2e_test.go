package coordinator

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/storage"
)

// TestEndToEndWithAgents: real agents beside the playground's stores, a
// coordinator and client-go writes: the global checkpoint passes the ts of
// the last write, in etcd and in storage, and the status covers every
// range with the agents up.
func TestEndToEndWithAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground with agents")
	}
	var kv *txnkv.Client
	c := startClusterStores(t, 2, 0, func(pdAddr string) {
		var err error
		kv, err = workload.Connect(context.Background(), []string{pdAddr})
		require.NoError(t, err)
	})
	defer kv.Close()
	// Two regions, one led by each store, so both agents report.
	halves, err := c.p.Cluster.Split([]byte("k010"))
	require.NoError(t, err)
	right := halves[1]
	other := c.p.StoreIDs()[0]
	if other == right.Leader {
		other = c.p.StoreIDs()[1]
	}
	require.NoError(t, c.p.Cluster.TransferLeader(right.ID, other))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.etcd(t)
	addrs := c.p.StoreAddrs()
	var lastTS uint64
	c.startAgents(t, 0)
	root := "file://" + t.TempDir()
	startTask(t, c, cli, "e2e", func(o *StartOptions) { o.StorageURL = root })
	co := c.startCoordinator(t, "A", func(cfg *Config) { cfg.TickInterval = 200 * time.Millisecond })

	for i := 0; i < 20; i++ {
		txn, err := kv.Begin()
		require.NoError(t, err)
		require.NoError(t, txn.Set([]byte(fmt.Sprintf("k%03d", i)), []byte("v")))
		require.NoError(t, txn.Commit(ctx))
		lastTS = txn.CommitTS()
	}
	require.Eventually(t, func() bool { return checkpoint(t, cli, "e2e") >= lastTS }, 30*time.Second, 100*time.Millisecond,
		"the checkpoint passes the last commit")

	var v TaskView
	require.Eventually(t, func() bool {
		views, err := ReadViews(ctx, cli, "e2e", time.Now())
		require.NoError(t, err)
		v = views[0]
		return v.Status != nil && v.Status.Checkpoint >= lastTS
	}, 10*time.Second, 100*time.Millisecond)
	require.True(t, v.Status.Covered)
	require.Zero(t, v.Status.UncoveredRanges)
	require.Len(t, v.Status.Agents, len(addrs))
	for _, a := range v.Status.Agents {
		require.Equal(t, AgentUp, a.State, "%+v", a)
		require.Positive(t, a.Regions, "each store leads a region: %+v", a)
	}
	require.GreaterOrEqual(t, v.Status.Regions, 2)
	require.True(t, co.IsLeader())

	s, err := storage.Open(ctx, root)
	require.NoError(t, err)
	defer s.Close()
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
		sp, held := safePoints(t, c)["pitr-e2e"]
		cp := checkpoint(t, cli, "e2e")
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
	var kv *txnkv.Client
	c := startClusterStores(t, 2, 0, func(pdAddr string) {
		var err error
		kv, err = workload.Connect(context.Background(), []string{pdAddr})
		require.NoError(t, err)
	})
	defer kv.Close()
	halves, err := c.p.Cluster.Split([]byte("k010"))
	require.NoError(t, err)
	right := halves[1]
	stores := c.p.StoreIDs()
	other := stores[0]
	if other == right.Leader {
		other = stores[1]
	}
	require.NoError(t, c.p.Cluster.TransferLeader(right.ID, other))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cli := c.etcd(t)
	c.startAgents(t, time.Minute)
	startTask(t, c, cli, "move", func(o *StartOptions) { o.StorageURL = "file://" + t.TempDir() })
	c.startCoordinator(t, "A", func(cfg *Config) { cfg.TickInterval = 200 * time.Millisecond })
	write := func(key string) uint64 {
		txn, err := kv.Begin()
		require.NoError(t, err)
		require.NoError(t, txn.Set([]byte(key), []byte("v")))
		require.NoError(t, txn.Commit(ctx))
		return txn.CommitTS()
	}
	ts := write("k001")
	require.Eventually(t, func() bool { return checkpoint(t, cli, "move") >= ts }, 30*time.Second, 100*time.Millisecond,
		"the checkpoint passes a first commit")

	// The right region's leader moves to the store that leads the left
	// one; that store's agent is not told.
	r, err := c.p.Cluster.RegionByID(right.ID)
	require.NoError(t, err)
	to := stores[0]
	if to == r.Leader {
		to = stores[1]
	}
	require.NoError(t, c.p.Cluster.TransferLeader(right.ID, to))
	moved := time.Now()
	ts = write("k020")
	require.Eventually(t, func() bool { return checkpoint(t, cli, "move") >= ts }, 20*time.Second, 100*time.Millisecond,
		"the checkpoint passes a commit in the region whose leader moved, well before the next periodic scan")
	t.Logf("checkpoint passed the commit %.1fs after the leader moved", time.Since(moved).Seconds())
}

// startAgents starts a real agent beside every store (300 ms flushes;
// regionInterval 0: the default PD scan period); they stop, and must have
// run without error, when the test ends.
func (c *cluster) startAgents(t *testing.T, regionInterval time.Duration) {
	t.Helper()
	addrs := c.p.StoreAddrs()
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Error})
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, len(addrs))
	for _, id := range c.p.StoreIDs() {
		a, err := agent.New(agent.Config{PDAddrs: []string{c.p.PDAddr()}, TiKVAddr: addrs[id], DataDir: filepath.Join(t.TempDir(), fmt.Sprint(id)),
			ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: 300 * time.Millisecond, RegionInterval: regionInterval, Logger: log})
		require.NoError(t, err)
		go func() { done <- a.Run(runCtx) }()
		t.Cleanup(func() { _ = a.Close() })
	}
	n := len(addrs)
	t.Cleanup(func() {
		stop()
		for ; n > 0; n-- {
			require.NoError(t, <-done)
		}
	})
}
