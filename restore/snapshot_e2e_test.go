package restore

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// snapshotTask turns the source's history into a task that did not start
// on empty ranges: it started at S, after the workload had written data,
// so its log holds only the commits after S, in two flushes (the first
// ending before B, so restore prunes it); a snapshot at B, written from a
// client-go scan of the source at B, is under the task root.
func snapshotTask(t *testing.T, s *sourceFixture) (b *testBackup, S, B uint64) {
	t.Helper()
	// S and B divide the workload's commits, not (start, cp]: cp is taken
	// after the source's locks have expired, which under -race can be long
	// after the last commit, and a B past every commit leaves the late
	// flush nothing after B.
	last := s.start
	for _, r := range s.hist {
		last = max(last, r.CommitTS)
	}
	S = s.start + (last-s.start)/4
	B = s.start + (last-s.start)/2
	mid := S + (B-S)/2
	b = newTestBackup(t, &pitrpb.TaskInfo{Name: "snap-e2e", StartTs: S, ClusterId: s.src.Cluster.ID()})
	b.keyframeEvery = 1 // the early flush is a chain of its own, which truncate removes
	var early, late []logfile.Row
	for _, r := range s.hist {
		switch {
		case r.CommitTS > S && r.CommitTS <= mid:
			early = append(early, r)
		case r.CommitTS > mid:
			late = append(late, r)
		}
	}
	// A key put and deleted before B, whose Put a later flush captured
	// again (after a leader change): the later file survives pruning, the
	// Delete's does not, so restore must not write log versions ≤ B.
	put := logfile.Row{Key: []byte("recaptured"), CommitTS: S + 1, StartTS: S, Op: logfile.OpPut, Value: []byte("gone at B")}
	del := logfile.Row{Key: []byte("recaptured"), CommitTS: S + 3, StartTS: S + 2, Op: logfile.OpDelete}
	early = append(early, put, del)
	late = append(late, put)
	b.flush(1, mid, early, cov("", "", S, mid))
	b.flush(2, s.cp, late, cov("", "", mid, s.cp))
	// Store 1 flushes again, with nothing new: its first meta is then not
	// its newest chain, which truncate keeps.
	b.flush(1, s.cp, nil, cov("", "", mid, s.cp))
	b.checkpoint(s.cp)
	kv := scanAt(t, s.srcCli, B)
	requireSame(t, s.hist.at(B), kv, "scan at B")
	testSnapshot{BackupTS: B, ClusterID: s.src.Cluster.ID(), Task: "snap-e2e",
		Splits: [][]byte{[]byte("bank/account/00000100"), []byte("kv/"), []byte("kv/0200")}, RowsPerFile: 150}.
		write(t, b.st, snapshot.TaskRoot(B), kv)
	return b, S, B
}

// keptRegistry remembers the collector registered last, after it was
// unregistered.
type keptRegistry struct {
	*prometheus.Registry
	kept prometheus.Collector
}

func (r *keptRegistry) Register(c prometheus.Collector) error {
	r.kept = c
	return r.Registry.Register(c)
}

func TestRestoreFromSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts playgrounds")
	}
	ctx := context.Background()
	s := newSource(t, ctx)
	b, S, B := snapshotTask(t, s)
	require.NotEqual(t, s.hist.at(S), map[string]string{}, "the task started on data")
	opts := func(ts uint64, pd string) Options {
		return Options{Source: b.st, PDAddrs: []string{pd}, RestoreTS: ts, Concurrency: 3, ChunkBytes: 16 << 10,
			ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	}

	p, err := PlanRestore(ctx, b.st, s.cp, nil)
	require.NoError(t, err)
	require.Equal(t, B, p.Base.BackupTS)
	require.Equal(t, 1, p.Pruned, "the flush ending before B")
	var sb strings.Builder
	require.NoError(t, p.Print(&sb))
	require.Contains(t, sb.String(), "log window    ("+fmt.Sprint(B))

	_, err = PlanRestore(ctx, b.st, B-1, nil)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.Contains(t, err.Error(), "restorable range is ["+fmt.Sprint(B))

	for _, T := range []uint64{B, B + (s.cp-B)/2, s.cp} {
		t.Run(fmt.Sprint(T-B), func(t *testing.T) {
			tgt, cli := startTarget(t, ctx, "bank/account/00000050", "kv/0300")
			o := opts(T, tgt.PDAddr())
			reg := &keptRegistry{Registry: prometheus.NewRegistry()}
			o.Metrics = reg
			res, err := Run(ctx, o)
			require.NoError(t, err)
			// What a dashboard scraped: the last phase done, every row.
			require.NotNil(t, reg.kept, "the restore registered its metrics")
			again := prometheus.NewRegistry()
			require.NoError(t, again.Register(reg.kept))
			require.NoError(t, testutil.GatherAndCompare(again, strings.NewReader(fmt.Sprintf(`
# HELP pitr_restore_written_rows_total Versions written to the target.
# TYPE pitr_restore_written_rows_total counter
pitr_restore_written_rows_total{task="snap-e2e"} %d
`, res.Rows)), "pitr_restore_written_rows_total"))
			now, err := cli.CurrentTimestamp("global")
			require.NoError(t, err)
			requireSame(t, s.hist.at(T), scanAt(t, cli, now), fmt.Sprintf("restored to B+%d", T-B))
			require.Positive(t, res.ChecksumRanges)
			require.Zero(t, res.ChecksumSkipped)
			t.Log(res.Summary())
		})
	}

	t.Run("explicit snapshot root", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		own := t.TempDir()
		ost, err := storage.Open(ctx, "file://"+own)
		require.NoError(t, err)
		defer ost.Close()
		kv := scanAt(t, s.srcCli, B-1)
		testSnapshot{BackupTS: B - 1, ClusterID: s.src.Cluster.ID(), RowsPerFile: 1000}.write(t, ost, "", kv)
		o := opts(s.cp, tgt.PDAddr())
		o.Snapshot = ost
		_, err = Run(ctx, o)
		require.NoError(t, err)
		now, err := cli.CurrentTimestamp("global")
		require.NoError(t, err)
		requireSame(t, s.hist.at(s.cp), scanAt(t, cli, now), "restored over the explicit snapshot")
	})

	t.Run("corrupt snapshot file", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		dir, st := b.copyTo(t)
		flipByte(t, filepath.Join(dir, filepath.FromSlash(snapshot.TaskRoot(B)+snapshot.FilePath("000001"))))
		o := opts(s.cp, tgt.PDAddr())
		o.Source = st
		_, err := Run(ctx, o)
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), snapshot.TaskRoot(B)+snapshot.FilePath("000001")+" has sha256")
		var we *WrittenError
		require.False(t, errors.As(err, &we))
		now, err := cli.CurrentTimestamp("global")
		require.NoError(t, err)
		require.Empty(t, scanAt(t, cli, now), "the target stays empty")
	})

	t.Run("after truncate", func(t *testing.T) {
		_, st := b.copyTo(t)
		res, err := Truncate(ctx, st, s.cp, TruncateOptions{})
		require.NoError(t, err)
		require.Equal(t, B, res.UntilTS, "the newest snapshot at or before the checkpoint is kept")
		require.Equal(t, 1, res.Metas, "store 1's flush before B")
		_, err = PlanRestore(ctx, st, B-1, nil)
		require.ErrorIs(t, err, ErrOutOfRange)
		require.Contains(t, err.Error(), "restorable range is ["+fmt.Sprint(B))
		rng := rand.New(rand.NewSource(int64(B)))
		for i := 0; i < 10; i++ {
			T := B + uint64(rng.Int63n(int64(s.cp-B)+1))
			tgt, cli := startTarget(t, ctx)
			o := opts(T, tgt.PDAddr())
			o.Source = st
			_, err := Run(ctx, o)
			require.NoError(t, err)
			now, err := cli.CurrentTimestamp("global")
			require.NoError(t, err)
			requireSame(t, s.hist.at(T), scanAt(t, cli, now), fmt.Sprintf("restored to B+%d after truncate", T-B))
		}
	})

	t.Run("checksum mismatch", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		txn, err := cli.Begin()
		require.NoError(t, err)
		require.NoError(t, txn.Set([]byte("kv/0200x"), []byte("not restored")))
		require.NoError(t, txn.Commit(ctx))
		o := opts(s.cp, tgt.PDAddr())
		o.Force = true
		_, err = Run(ctx, o)
		require.ErrorIs(t, err, ErrChecksum)
		var we *WrittenError
		require.True(t, errors.As(err, &we))
		require.Contains(t, err.Error(), "expected crc64xor=")
		require.Contains(t, err.Error(), "got crc64xor=")
		require.NotContains(t, err.Error(), "\n")

		// A rerun has nothing left to write; the expected sums are in the
		// progress file, so it checks again.
		_, err = Run(ctx, o)
		require.ErrorIs(t, err, ErrChecksum)
		// Without the checksum it finishes.
		o.SkipChecksum = true
		res, err := Run(ctx, o)
		require.NoError(t, err)
		require.Zero(t, res.ChecksumRanges)
	})
}
