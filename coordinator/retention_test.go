package coordinator

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/testkit/metasim"
)

// retentionRoot is a task root of two hours of 1-minute flushes of 3
// stores (chains of 30 metas) from metasim, with finished snapshots at 1h30
// and 1h54 after its start.
func retentionRoot(t *testing.T) (url string, sim *metasim.Result, snaps []uint64) {
	t.Helper()
	ctx := context.Background()
	url = "file://" + filepath.Join(t.TempDir(), "root")
	st, err := storage.Open(ctx, url)
	require.NoError(t, err)
	defer st.Close()
	sim, err = metasim.Write(ctx, st, metasim.Options{Task: "keep", Regions: 30, Flushes: 120, Interval: time.Minute, KeyframeEvery: 30})
	require.NoError(t, err)
	for _, m := range []int64{90, 114} {
		ts := sim.Start + uint64(m*60_000)<<keyspace.LogicalBits
		all := &pitrpb.KeyRange{}
		b, err := logfile.EncodeBackupMeta(&pitrpb.BackupMeta{BackupTs: ts, Task: "keep", Ranges: []*pitrpb.KeyRange{all},
			Checksums: []*pitrpb.RangeChecksum{{Range: all}}})
		require.NoError(t, err)
		require.NoError(t, st.Put(ctx, snapshot.TaskRoot(ts)+snapshot.MetaName, b))
		snaps = append(snaps, ts)
	}
	return url, sim, snaps
}

func retentionTerm(t *testing.T, cfg Config) (*term, *metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	met, err := newMetrics(reg)
	require.NoError(t, err)
	storMet, err := storage.NewMetricsSet(reg, storage.MetricsOptions{})
	require.NoError(t, err)
	cfg.SetDefaults()
	return &term{c: &Coordinator{cfg: cfg, met: met, storMet: storMet}, log: hclog.NewNullLogger()}, met
}

// TestRetention: the policy truncates to now − keep, but never past the
// keep-snapshots-th newest snapshot, and does nothing while there are
// fewer, or when no snapshot is old enough; truncate itself keeps the
// newest snapshot at or before that point and the log after it.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	url, sim, snaps := retentionRoot(t)
	now := keyspace.Time(sim.Checkpoint)
	rec := &pitrpb.TaskRecord{Info: &pitrpb.TaskInfo{Name: "keep"}, StorageUrl: url, State: pitrpb.TaskState_TASK_STATE_RUNNING}
	var last usage
	run := func(keep time.Duration, n int) *restore.TruncateResult {
		tm, _ := retentionTerm(t, Config{Keep: keep, KeepSnapshots: n, NoCompaction: true})
		r := newRetention(tm, ctx)
		res, u, err := r.pass(rec, now)
		require.NoError(t, err)
		last = u
		return res
	}
	require.Nil(t, run(0, 0), "no policy")
	require.Equal(t, sim.Start, last.restorableFrom, "started empty, never truncated")
	require.Positive(t, last.storage.Bytes)
	require.Greater(t, last.storage.Objects, int64(sim.Metas))
	require.Nil(t, run(10*time.Minute, 3), "three snapshots kept, and there are two")
	require.Nil(t, run(time.Hour, 0), "no snapshot an hour old: nothing may go")

	res := run(time.Minute, 2)
	require.NotNil(t, res)
	require.Equal(t, snaps[0], res.UntilTS, "the second newest snapshot bounds it")
	require.Equal(t, 3*3*30, res.Metas, "the chains of 30 one-minute flushes ending by 1h30: three a store")
	require.Empty(t, res.Snapshots)

	require.Equal(t, snaps[0], last.restorableFrom)
	res = run(time.Minute, 1)
	require.Equal(t, snaps[1], res.UntilTS)
	require.Equal(t, snaps[1], last.restorableFrom)
	require.Equal(t, []string{snapshot.TaskRoot(snaps[0])}, res.Snapshots)
	st, err := storage.Open(ctx, url)
	require.NoError(t, err)
	defer st.Close()
	b, err := restore.Load(ctx, st)
	require.NoError(t, err)
	require.Equal(t, snaps[1], b.TruncatedTo)
	_, err = restore.PlanRestore(ctx, st, snaps[1]-1, nil)
	require.ErrorIs(t, err, restore.ErrOutOfRange)

	// With compaction on (the default), the pass compacts the sealed
	// chains: everything but each store's newest.
	url2, _, _ := retentionRoot(t)
	rec2 := &pitrpb.TaskRecord{Info: &pitrpb.TaskInfo{Name: "keep"}, StorageUrl: url2, State: pitrpb.TaskState_TASK_STATE_RUNNING}
	tm, met := retentionTerm(t, Config{})
	_, _, err = newRetention(tm, ctx).pass(rec2, now)
	require.NoError(t, err)
	require.Equal(t, 1.0, testutil.ToFloat64(met.compactions.WithLabelValues("ok")))
	st2, err := storage.Open(ctx, url2)
	require.NoError(t, err)
	defer st2.Close()
	li, err := restore.DescribeLog(ctx, st2, 0)
	require.NoError(t, err)
	require.Equal(t, 1, li.Compacted)
	require.Equal(t, 3*30+1, li.Metas, "each store's newest chain, and the compacted meta")
}

// TestRetentionSchedule: maybe runs a due task once in the background,
// counts the result and waits RetentionInterval before the next run;
// stopped tasks and a zero keep are left alone.
func TestRetentionSchedule(t *testing.T) {
	url, sim, _ := retentionRoot(t)
	tm, met := retentionTerm(t, Config{Keep: time.Minute, KeepSnapshots: 1, RetentionInterval: time.Hour, NoCompaction: true})
	r := newRetention(tm, context.Background())
	rec := &pitrpb.TaskRecord{Info: &pitrpb.TaskInfo{Name: "keep"}, StorageUrl: url, State: pitrpb.TaskState_TASK_STATE_STOPPED}
	now := keyspace.Time(sim.Checkpoint)
	r.maybe(rec, now)
	tm.wg.Wait()
	require.Zero(t, testutil.CollectAndCount(met.truncations))
	rec.State = pitrpb.TaskState_TASK_STATE_PAUSED
	r.maybe(rec, now)
	tm.wg.Wait()
	require.Equal(t, 1.0, testutil.ToFloat64(met.truncations.WithLabelValues("ok")))
	r.maybe(rec, now) // not due for an hour
	tm.wg.Wait()
	require.Equal(t, 1.0, testutil.ToFloat64(met.truncations.WithLabelValues("ok")))
	require.Positive(t, testutil.ToFloat64(met.restorableFrom.WithLabelValues("keep")))
	st := &task.Status{Task: "keep"}
	r.status(st)
	require.NotZero(t, st.RestorableFrom)
	require.NotNil(t, st.Storage)
	require.Positive(t, st.Storage.Bytes)
}
