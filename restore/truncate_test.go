package restore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// truncBackup is a task root (start 100, checkpoint 300) with a meta every
// 20 ts from store 1 (each its own chain: keyframeEvery 1) and one chain of
// store 2 across the whole range, and finished snapshots at 150 and 200.
func truncBackup(t *testing.T) *testBackup {
	t.Helper()
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "trunc", StartTs: 100, ClusterId: 7})
	b.keyframeEvery = 1
	from := uint64(100)
	for ts := uint64(120); ts <= 300; ts += 20 {
		var rows []logfile.Row
		for c := from + 1; c <= ts; c += 3 {
			rows = append(rows, logfile.Row{Key: []byte(fmt.Sprintf("a%03d", c%50)), CommitTS: c, StartTS: c - 1, Op: logfile.OpPut, Value: []byte(fmt.Sprint(c))})
		}
		b.flush(1, ts, rows, cov("", "m", from, ts))
		from = ts
	}
	b.keyframeEvery = 0
	b.flush(2, 130, nil, cov("m", "", 100, 130))
	b.flush(2, 300, nil, cov("m", "", 130, 300))
	// Store 3's agent ran from 110 to 190 (a chain of four metas), then
	// its next one from 190 on.
	for _, ts := range []uint64{130, 150, 170, 190} {
		b.flush(3, ts, nil, cov("zz", "", ts-20, ts))
	}
	b.flushers[3].Close()
	delete(b.flushers, 3)
	b.flush(3, 300, nil, cov("zz", "", 190, 300))
	// Store 4's agent flushed once at 140 and has had no region since: its
	// chain is its newest, which its agent continues when it gets one.
	b.flush(4, 140, nil, cov("zy", "zz", 100, 140))
	b.checkpoint(300)
	kv := map[string]string{"a001": "x", "n001": "y"}
	for _, at := range []uint64{150, 200} {
		testSnapshot{BackupTS: at, ClusterID: 7, Task: "trunc"}.write(t, b.st, snapshot.TaskRoot(at), kv)
	}
	return b
}

// requireTruncatedTo checks what readers see of a root truncated to s
// (maybe half way): restores from s on plan and verify, points before s
// are out of the range that starts at s.
func requireTruncatedTo(t *testing.T, st storage.Storage, s uint64) {
	t.Helper()
	ctx := context.Background()
	for _, T := range []uint64{s, 250, 300} {
		p, err := PlanRestore(ctx, st, T, nil)
		require.NoError(t, err, "plan to %d", T)
		require.Equal(t, s, p.Base.BackupTS)
		_, err = Verify(ctx, st, VerifyOptions{RestoreTS: T})
		require.NoError(t, err, "verify to %d", T)
	}
	_, err := PlanRestore(ctx, st, s-1, nil)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.Contains(t, err.Error(), fmt.Sprintf("restorable range is [%d", s))
	_, err = Verify(ctx, st, VerifyOptions{RestoreTS: s - 1})
	require.ErrorIs(t, err, ErrOutOfRange)
}

func TestTruncate(t *testing.T) {
	ctx := context.Background()
	b := truncBackup(t)
	metasBefore := countObjects(t, b.st, logfile.MetaPrefix)

	dry, err := Truncate(ctx, b.st, 210, TruncateOptions{DryRun: true})
	require.NoError(t, err)
	require.Equal(t, uint64(200), dry.UntilTS)
	require.Equal(t, 9, dry.Metas, "store 1's metas flushed at 120..200 and store 3's first chain; store 2's chain crosses 200")
	require.Equal(t, 5, dry.Files)
	require.Equal(t, []string{snapshot.TaskRoot(150)}, dry.Snapshots)
	require.Contains(t, dry.Summary(), "would remove 9 metas, 5 files")
	require.Equal(t, metasBefore, countObjects(t, b.st, logfile.MetaPrefix), "a dry run deletes nothing")
	_, err = PlanRestore(ctx, b.st, 120, nil)
	require.ErrorIs(t, err, ErrOutOfRange, "the snapshot at 150 is the first")

	res, err := Truncate(ctx, b.st, 210, TruncateOptions{})
	require.NoError(t, err)
	require.Equal(t, dry.Metas, res.Metas)
	require.Equal(t, metasBefore-9, countObjects(t, b.st, logfile.MetaPrefix))
	_, err = b.st.Get(ctx, logfile.MetaPath(140, 4))
	require.NoError(t, err, "a store's newest chain stays")
	require.Zero(t, countObjects(t, b.st, snapshot.TaskRoot(150)))
	requireTruncatedTo(t, b.st, 200)
	li, err := DescribeLog(ctx, b.st, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(200), li.Restorable)
	require.Equal(t, uint64(200), li.TruncatedTo)

	again, err := Truncate(ctx, b.st, 210, TruncateOptions{})
	require.NoError(t, err, "a second truncate to the same point is a no-op")
	require.Zero(t, again.Metas+again.Files+len(again.Snapshots))
	earlier, err := Truncate(ctx, b.st, 120, TruncateOptions{})
	require.NoError(t, err, "the range never moves back")
	require.Equal(t, uint64(200), earlier.UntilTS)

	_, err = Truncate(ctx, b.st, 301, TruncateOptions{})
	require.ErrorIs(t, err, ErrOutOfRange)
	require.Contains(t, err.Error(), "past the global checkpoint")

	// A task that started empty and has no snapshot: every point needs
	// the log from its start.
	empty, cuts := smallBackup(t)
	_, err = Truncate(ctx, empty.st, cuts[2], TruncateOptions{})
	require.ErrorIs(t, err, ErrNoBase)
	require.Contains(t, err.Error(), "no usable snapshot at or before")
}

// TestTruncateKilledAtEachStep: a truncate stopped after each of its steps
// leaves a root every reader handles as truncated, and a rerun finishes it
// to the same state as one that was never stopped.
func TestTruncateKilledAtEachStep(t *testing.T) {
	ctx := context.Background()
	ref := truncBackup(t)
	_, err := Truncate(ctx, ref.st, 210, TruncateOptions{})
	require.NoError(t, err)
	want := listAll(t, ref.st)
	for step := 1; step <= 4+9; step++ { // 4 steps, and after each of the 9 metas deleted
		t.Run(fmt.Sprint(step), func(t *testing.T) {
			b := truncBackup(t)
			stop := errors.New("killed")
			metas := 0
			_, err := Truncate(ctx, b.st, 210, TruncateOptions{afterStep: func(n int) error {
				if n == step {
					return stop
				}
				return nil
			}, afterMeta: func(string) error {
				if metas++; 4+metas == step {
					return stop
				}
				return nil
			}})
			require.ErrorIs(t, err, stop)
			require.Contains(t, err.Error(), "run pitr truncate again to finish")
			requireTruncatedTo(t, b.st, 200)
			_, err = Truncate(ctx, b.st, 210, TruncateOptions{})
			require.NoError(t, err)
			require.Equal(t, keysOf(want), keysOf(listAll(t, b.st)))
		})
	}
}

func countObjects(t *testing.T, st storage.Storage, prefix string) int {
	t.Helper()
	n := 0
	require.NoError(t, st.List(context.Background(), prefix, func(storage.ObjectInfo) error { n++; return nil }))
	return n
}

func listAll(t *testing.T, st storage.Storage) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	require.NoError(t, st.List(context.Background(), "", func(oi storage.ObjectInfo) error { out[oi.Key] = true; return nil }))
	return out
}

// keysOf is what to compare of two roots: every key but the data files'
// (named with a random id) and the truncation record (its time), and how
// many data files there are.
func keysOf(m map[string]bool) []string {
	var out []string
	logs := 0
	for k := range m {
		switch {
		case strings.HasPrefix(k, logfile.LogPrefix):
			logs++
		case k != logfile.TruncationPath:
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return append(out, fmt.Sprintf("%d data files", logs))
}
