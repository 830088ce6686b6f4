package coordinator

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// TestGCSafePointLifecycle: start holds GC at start_ts; running moves the
// safepoint with the checkpoint; pause keeps it (and stops advancing); a
// task paused past the TTL fails but keeps GC held; resume advances again;
// stop leaves no service safepoint in PD, and the coordinator does not
// bring it back.
func TestGCSafePointLifecycle(t *testing.T) {
	c := startCluster(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.etcd(t)
	a := startFakeAgent(t, cli, 1, region(1, 1, "", ""))
	a.serve("gc")
	root := t.TempDir()
	rec := startTask(t, c, cli, "gc", func(o *task.StartOptions) { o.StorageURL = "file://" + root })
	start := rec.GetInfo().GetStartTs()
	require.Equal(t, start, safePoints(t, c)["pitr-gc"], "start holds GC at start_ts before it returns")

	const ttl = 2 * time.Second
	c.startCoordinator(t, "A", func(cfg *Config) { cfg.SafePointTTL = ttl })
	require.Eventually(t, func() bool { return checkpoint(t, cli, "gc") > start }, 10*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		cp := checkpoint(t, cli, "gc")
		return safePoints(t, c)["pitr-gc"] == cp
	}, 5*time.Second, 20*time.Millisecond, "the safepoint follows the checkpoint")

	// Pause: GC stays held, the checkpoint stops.
	changed, err := task.PauseTask(ctx, cli, c.pd, "gc", ttl, time.Now())
	require.NoError(t, err)
	require.True(t, changed)
	time.Sleep(300 * time.Millisecond) // a tick in flight may still land
	paused := checkpoint(t, cli, "gc")
	time.Sleep(time.Second)
	require.Equal(t, paused, checkpoint(t, cli, "gc"), "a paused task does not advance")
	require.Equal(t, paused, safePoints(t, c)["pitr-gc"], "pausing keeps the safepoint")
	require.Equal(t, pitrpb.TaskState_TASK_STATE_PAUSED, taskState(t, cli, "gc").GetState())

	// Paused past the TTL: failed, not healthy; GC still held.
	require.Eventually(t, func() bool {
		return taskState(t, cli, "gc").GetState() == pitrpb.TaskState_TASK_STATE_FAILED
	}, 10*time.Second, 50*time.Millisecond)
	require.Contains(t, taskState(t, cli, "gc").GetError(), "longer than the GC safepoint TTL")
	require.Equal(t, paused, safePoints(t, c)["pitr-gc"])
	views, err := task.ReadViews(ctx, cli, "gc", time.Now())
	require.NoError(t, err)
	require.Equal(t, "failed", views[0].State)

	// Resume (GC has not passed): it advances again.
	changed, err = task.ResumeTask(ctx, cli, c.pd, "gc", ttl, time.Now())
	require.NoError(t, err)
	require.True(t, changed)
	require.Empty(t, taskState(t, cli, "gc").GetError())
	require.Eventually(t, func() bool { return checkpoint(t, cli, "gc") > paused }, 10*time.Second, 50*time.Millisecond)

	// Stop: nothing left in PD, and it stays that way.
	changed, err = task.StopTask(ctx, cli, c.pd, "gc", time.Now())
	require.NoError(t, err)
	require.True(t, changed)
	require.NotContains(t, safePoints(t, c), "pitr-gc")
	time.Sleep(500 * time.Millisecond)
	require.NotContains(t, safePoints(t, c), "pitr-gc", "the coordinator does not bring it back")
	changed, err = task.StopTask(ctx, cli, c.pd, "gc", time.Now())
	require.NoError(t, err)
	require.False(t, changed, "stop is idempotent")
	_, err = task.PauseTask(ctx, cli, c.pd, "gc", ttl, time.Now())
	require.ErrorIs(t, err, task.ErrTaskState)
	_, err = task.ResumeTask(ctx, cli, c.pd, "gc", ttl, time.Now())
	require.ErrorIs(t, err, task.ErrTaskState)

	// Metadata in storage is kept; its checkpoint went forward.
	s, err := storage.Open(ctx, "file://"+root)
	require.NoError(t, err)
	defer s.Close()
	for _, p := range []string{logfile.LockPath, logfile.TaskPath} {
		ok, err := s.Exists(ctx, p)
		require.NoError(t, err)
		require.True(t, ok, p)
	}
	b, err := s.Get(ctx, logfile.CheckpointPath)
	require.NoError(t, err)
	gcp, err := logfile.DecodeCheckpoint(b)
	require.NoError(t, err)
	require.Greater(t, gcp.GetTs(), start)
	require.LessOrEqual(t, gcp.GetTs(), checkpoint(t, cli, "gc"))
}

// TestGCPassedFailsTask: when PD's GC safepoint is found above the
// checkpoint (the safepoint expired while no coordinator ran, and GC ran),
// the task fails with a clear error and cannot be resumed.
func TestGCPassedFailsTask(t *testing.T) {
	c := startCluster(t, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := c.etcd(t)
	rec := startTask(t, c, cli, "lost", func(o *task.StartOptions) { o.SafePointTTL = time.Second })
	start := rec.GetInfo().GetStartTs()
	// No coordinator refreshes it: wait for it to expire, then GC.
	require.Eventually(t, func() bool {
		_, held := safePoints(t, c)["pitr-lost"]
		return !held
	}, 10*time.Second, 100*time.Millisecond)
	gcSP, err := c.p.RunGC(ctx)
	require.NoError(t, err)
	require.Greater(t, gcSP, start)

	c.startCoordinator(t, "A", nil)
	require.Eventually(t, func() bool {
		return taskState(t, cli, "lost").GetState() == pitrpb.TaskState_TASK_STATE_FAILED
	}, 10*time.Second, 50*time.Millisecond)
	require.Contains(t, taskState(t, cli, "lost").GetError(), "is above the checkpoint")
	_, err = task.ResumeTask(ctx, cli, c.pd, "lost", time.Hour, time.Now())
	require.ErrorIs(t, err, task.ErrTaskState)
	_, err = task.StopTask(ctx, cli, c.pd, "lost", time.Now())
	require.NoError(t, err)
	require.NotContains(t, safePoints(t, c), "pitr-lost")
}

// TestStartTask: the storage root, the name and the start ts are checked.
func TestStartTask(t *testing.T) {
	c := startCluster(t, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := c.etcd(t)
	rootX := "file://" + t.TempDir()
	rec := startTask(t, c, cli, "a", func(o *task.StartOptions) {
		o.StorageURL = rootX
		o.Ranges = []keyspace.Range{rg("m", "n"), rg("a", "c"), rg("b", "d")}
	})
	require.Len(t, rec.GetInfo().GetRanges(), 2, "ranges are stored normalized")
	require.Equal(t, []byte("d"), rec.GetInfo().GetRanges()[0].GetEndKey())

	start := func(o task.StartOptions) error {
		if o.StorageURL == "" {
			o.StorageURL = "file://" + t.TempDir()
		}
		_, err := task.StartTask(ctx, cli, c.pd, o)
		return err
	}
	err := start(task.StartOptions{Name: "b", StorageURL: rootX})
	require.ErrorIs(t, err, task.ErrStorageOwned)
	require.Contains(t, err.Error(), `belongs to task "a"`)
	require.ErrorIs(t, start(task.StartOptions{Name: "a"}), task.ErrTaskExists)
	require.ErrorIs(t, start(task.StartOptions{Name: "bad/name"}), task.ErrInvalidRequest)
	require.ErrorIs(t, start(task.StartOptions{Name: "c", StorageURL: "s3://b/p?secret_access_key=x"}), task.ErrInvalidRequest)
	require.ErrorIs(t, start(task.StartOptions{Name: "c", Ranges: []keyspace.Range{rg("b", "a")}}), task.ErrInvalidRequest)
	require.ErrorIs(t, start(task.StartOptions{Name: "c", StartTS: keyspace.FromTime(time.Now().Add(time.Hour))}), task.ErrStartTS)

	// Below the GC safepoint.
	old, err := GetTS(ctx, c.pd)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	_, err = task.StopTask(ctx, cli, c.pd, "a", time.Now()) // release the hold so GC can pass
	require.NoError(t, err)
	gcSP, err := c.p.RunGC(ctx)
	require.NoError(t, err)
	require.Greater(t, gcSP, old)
	err = start(task.StartOptions{Name: "c", StartTS: old})
	require.ErrorIs(t, err, task.ErrStartTS)
	require.Contains(t, err.Error(), "not above the GC safepoint")

	// A root already claimed by the same task and cluster (a retried start)
	// is accepted.
	rootY := "file://" + t.TempDir()
	s, err := storage.Open(ctx, rootY)
	require.NoError(t, err)
	defer s.Close()
	lock, err := logfile.EncodeLock(&pitrpb.Lock{Task: "d", ClusterId: c.p.PD.ClusterID()})
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, logfile.LockPath, lock))
	require.NoError(t, start(task.StartOptions{Name: "d", StorageURL: rootY}))
	// ... but not by another cluster.
	rootZ := "file://" + t.TempDir()
	sz, err := storage.Open(ctx, rootZ)
	require.NoError(t, err)
	defer sz.Close()
	lock, err = logfile.EncodeLock(&pitrpb.Lock{Task: "e", ClusterId: 12345})
	require.NoError(t, err)
	require.NoError(t, sz.Put(ctx, logfile.LockPath, lock))
	require.ErrorIs(t, start(task.StartOptions{Name: "e", StorageURL: rootZ}), task.ErrStorageOwned)
}

// countingPD counts the GC calls a coordinator makes to PD.
type countingPD struct {
	PD
	service, gcRead atomic.Int64
}

func (p *countingPD) UpdateServiceGCSafePoint(ctx context.Context, id string, ttl int64, sp uint64) (uint64, error) {
	p.service.Add(1)
	return p.PD.UpdateServiceGCSafePoint(ctx, id, ttl, sp)
}

func (p *countingPD) UpdateGCSafePoint(ctx context.Context, sp uint64) (uint64, error) {
	if sp == 0 {
		p.gcRead.Add(1)
	}
	return p.PD.UpdateGCSafePoint(ctx, sp)
}

// TestGCCallRate (real-TiKV audit R9): a running task does not call
// UpdateServiceGCSafePoint and UpdateGCSafePoint(0) every tick (each one is
// an etcd write or a deprecation WARN on PD, TIKV-PROTOCOLS §8.6): at most
// once every 10 ticks each, while the checkpoint advances every tick. I3
// holds at every sample: the service safepoint is held and at or below
// the checkpoint.
func TestGCCallRate(t *testing.T) {
	c := startCluster(t, 0)
	cli := c.etcd(t)
	a := startFakeAgent(t, cli, 1, region(1, 1, "", ""))
	a.serve("rate")
	startTask(t, c, cli, "rate", nil)
	const tick = 100 * time.Millisecond
	pd := &countingPD{PD: c.pd}
	c.startCoordinator(t, "A", func(cfg *Config) { cfg.PD = pd; cfg.TickInterval = tick })

	first := checkpoint(t, cli, "rate")
	require.Eventually(t, func() bool { return checkpoint(t, cli, "rate") > first }, 10*time.Second, 20*time.Millisecond)
	begin, service0, gc0 := time.Now(), pd.service.Load(), pd.gcRead.Load()
	var lastSP uint64
	for time.Since(begin) < 4*time.Second {
		sp, held := safePoints(t, c)["pitr-rate"]
		cp := checkpoint(t, cli, "rate")
		require.True(t, held, "I3: the safepoint is held")
		require.LessOrEqual(t, sp, cp, "I3: safepoint %d at or below the checkpoint %d", sp, cp)
		require.GreaterOrEqual(t, sp, lastSP, "the safepoint never goes back")
		lastSP = sp
		time.Sleep(50 * time.Millisecond) // sampling, not synchronisation
	}
	ticks := int64(time.Since(begin) / tick)
	service, gc := pd.service.Load()-service0, pd.gcRead.Load()-gc0
	t.Logf("over %d ticks: %d UpdateServiceGCSafePoint, %d UpdateGCSafePoint(0)", ticks, service, gc)
	require.LessOrEqual(t, service, ticks/10+2, "UpdateServiceGCSafePoint calls over %d ticks", ticks)
	require.LessOrEqual(t, gc, ticks/10+2, "UpdateGCSafePoint(0) calls over %d ticks", ticks)
	require.Greater(t, lastSP, first, "the safepoint still follows the checkpoint")
}

// TestGCPassedWhileRunning: with the GC calls rate-limited, a running
// term still notices within its GC read interval (10 ticks) when PD's GC
// has passed a stuck checkpoint (here the safepoint is removed behind its
// back and GC runs), and fails the task.
func TestGCPassedWhileRunning(t *testing.T) {
	c := startCluster(t, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := c.etcd(t)
	a := startFakeAgent(t, cli, 1, region(1, 1, "", ""))
	a.serve("passed")
	rec := startTask(t, c, cli, "passed", nil)
	c.startCoordinator(t, "A", nil) // tick 100 ms, TTL 1 h: no refresh due
	start := rec.GetInfo().GetStartTs()
	require.Eventually(t, func() bool { return checkpoint(t, cli, "passed") > start }, 10*time.Second, 20*time.Millisecond)
	cp := checkpoint(t, cli, "passed")
	a.freeze(cp) // the checkpoint stops: no hold is due for an hour
	require.Eventually(t, func() bool { return safePoints(t, c)["pitr-passed"] == cp }, 10*time.Second, 20*time.Millisecond)

	_, err := c.pd.UpdateServiceGCSafePoint(ctx, task.SafePointID("passed"), 0, 0)
	require.NoError(t, err)
	gcSP, err := c.p.RunGC(ctx)
	require.NoError(t, err)
	require.Greater(t, gcSP, cp)
	require.Eventually(t, func() bool {
		return taskState(t, cli, "passed").GetState() == pitrpb.TaskState_TASK_STATE_FAILED
	}, 10*time.Second, 50*time.Millisecond, "failed within the GC read interval")
	require.Contains(t, taskState(t, cli, "passed").GetError(), "is above the checkpoint")
}
