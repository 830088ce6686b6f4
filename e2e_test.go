package pitr_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
)

// TestExactRestoreEndToEnd is the acceptance check of I4 on the whole
// pipeline: real agents and coordinators capture a client-go bank workload
// while regions split, leaders move, a store restarts, an agent is killed
// and the leading coordinator fails over; then, for 20 random T in
// [start_ts, checkpoint], a restore into a fresh cluster must read, at T,
// exactly what the source reads at T, key for key.
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
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr})
	dir := t.TempDir()

	src, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: filepath.Join(dir, "src"),
		MinTSInterval: 200 * time.Millisecond, Logger: log})
	require.NoError(t, err)
	defer src.Close()
	pdAddr := src.PDAddr()
	// client-go first: it rewrites pd/client globals that PD clients read.
	kv := newKV(t, pdAddr)
	defer kv.Close()
	cl, err := coordinator.Connect(ctx, []string{pdAddr}, 10*time.Second, "e2e")
	require.NoError(t, err)
	defer cl.Close()

	storageURL := "file://" + filepath.Join(dir, "backup")
	rec, err := coordinator.StartTask(ctx, cl.Etcd, cl.PD, coordinator.StartOptions{
		Name: "e2e", StorageURL: storageURL, EmptyAt: coordinator.EmptyAtTiKV(kv),
	})
	require.NoError(t, err)
	require.True(t, rec.GetInfo().GetStartedEmpty())
	startTS := rec.GetInfo().GetStartTs()

	var wg sync.WaitGroup
	defer wg.Wait()
	goRun := func(name string, run func(context.Context) error) context.CancelFunc {
		cctx, ccancel := context.WithCancel(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(cctx); err != nil && cctx.Err() == nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
		return ccancel
	}
	addrs := src.StoreAddrs()
	startAgent := func(store uint64) (*agent.Agent, context.CancelFunc) {
		a, err := agent.New(agent.Config{
			PDAddrs: []string{pdAddr}, TiKVAddr: addrs[store], DataDir: filepath.Join(dir, fmt.Sprintf("agent-%d", store)),
			ListenAddr: "127.0.0.1:0", HTTPAddr: "-", FlushInterval: time.Second, Logger: log,
		})
		require.NoError(t, err)
		return a, goRun("agent", a.Run)
	}
	type running struct {
		a    *agent.Agent
		stop context.CancelFunc
	}
	agents := map[uint64]running{}
	for _, id := range src.StoreIDs() {
		a, stop := startAgent(id)
		agents[id] = running{a, stop}
	}
	defer func() {
		for _, r := range agents {
			r.stop()
			_ = r.a.Close()
		}
	}()
	coords := make([]*coordinator.Coordinator, 2)
	coordStop := make([]context.CancelFunc, 2)
	for i := range coords {
		c, err := coordinator.New(coordinator.Config{PDAddrs: []string{pdAddr}, ID: fmt.Sprintf("c%d", i),
			HTTPAddr: "-", SessionTTL: 2 * time.Second, TickInterval: 500 * time.Millisecond, Logger: log,
			ResolveLocksAfter: 3 * time.Second, Locks: coordinator.NewLockResolver(kv.KVStore)})
		require.NoError(t, err)
		coords[i] = c
		coordStop[i] = goRun("coordinator", c.Run)
		defer c.Close()
	}
	defer func() {
		for _, s := range coordStop {
			s()
		}
	}()

	// The workload, with splits and leader moves all along.
	bank := &workload.Bank{Client: kv, Prefix: "e2e/", Accounts: 300, Initial: 1000}
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
			agents[id].stop()
			_ = agents[id].a.Close()
			a, stop := startAgent(id)
			agents[id] = running{a, stop}
			agentKilled = true
		case !coordKilled && frac > 0.6:
			for j, c := range coords {
				if c.IsLeader() {
					coordStop[j]()
					_ = c.Close()
					coordKilled = true
				}
			}
		}
	}
	step.Stop()
	stopWork()
	require.NoError(t, <-workErr)
	require.True(t, storeRestarted && agentKilled && coordKilled, "every fault was injected")

	// Resolve what the cut-off transfers left locked, then wait for the
	// checkpoint to pass the end of the workload.
	endTS, err := coordinator.GetTS(ctx, cl.PD)
	require.NoError(t, err)
	total, _, err := bank.Sum(ctx, endTS)
	require.NoError(t, err)
	require.Equal(t, bank.Total(), total)
	// Nobody resolves what the cut-off transfers left locked but the
	// coordinator.
	cp := waitCheckpoint(t, ctx, cl.Etcd, "e2e", endTS, 90*time.Second)
	t.Logf("%d transfers; checkpoint %d; %d regions", st.Committed.Load(), cp, len(src.Cluster.Regions()))

	backup, err := storage.Open(ctx, storageURL)
	require.NoError(t, err)
	defer backup.Close()
	_, err = restore.Verify(ctx, backup, restore.VerifyOptions{RestoreTS: cp})
	require.NoError(t, err)

	// 20 restore points: both ends and 18 random ones in between.
	points := []uint64{startTS, cp}
	for len(points) < 20 {
		points = append(points, startTS+uint64(rng.Int63n(int64(cp-startTS))))
	}
	sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
	for i, T := range points {
		dst, err := playground.Start(ctx, playground.Config{Stores: 3, GCLifeTime: time.Second, Logger: log})
		require.NoError(t, err)
		res, err := restore.Run(ctx, restore.Options{Source: backup, PDAddrs: []string{dst.PDAddr()}, RestoreTS: T,
			ProgressFile: filepath.Join(dir, fmt.Sprintf("progress-%d", i)), Logger: log})
		require.NoError(t, err, "restore to T=%d", T)
		// The target holds versions ≤ T only, so it is read now: its GC,
		// running again since the restore ended, may be past T.
		dkv := newKV(t, dst.PDAddr())
		now, err := dkv.CurrentTimestamp("global")
		require.NoError(t, err)
		want, got := readAll(t, kv, T), readAll(t, dkv, now)
		dkv.Close()
		require.NoError(t, dst.Close())
		requireSame(t, want, got, T)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored)", i, T, len(got), res.Rows)
	}
}

func newKV(t *testing.T, pdAddr string) *txnkv.Client {
	t.Helper()
	cli, err := workload.Connect(context.Background(), []string{pdAddr})
	require.NoError(t, err)
	return cli
}
