package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// compactBackup is a task root that started empty at 1000: two stores
// flush 12 times each, 100 ts apart, rows of 100 keys (puts and deletes,
// some captured twice), store 1 in chains of 3 metas, store 2 of 4.
func compactBackup(t *testing.T) (*testBackup, uint64) {
	t.Helper()
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "cmp", StartTs: 1000, StartedEmpty: true})
	rng := rand.New(rand.NewSource(7))
	var last []logfile.Row
	for w := uint64(1); w <= 12; w++ {
		for _, store := range []uint64{1, 2} { // in order: the same root every time
			start, end := map[uint64]string{1: "", 2: "k050"}[store], map[uint64]string{1: "k050", 2: ""}[store]
			var rows []logfile.Row
			for i := 0; i < 40; i++ {
				k := rng.Intn(50) + 50*int(store-1)
				ts := 1000 + (w-1)*100 + 1 + uint64(rng.Intn(99))
				r := logfile.Row{Key: []byte(fmt.Sprintf("k%03d", k)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(fmt.Sprintf("v%d", ts))}
				if rng.Intn(4) == 0 {
					r.Op, r.Value = logfile.OpDelete, nil
				}
				rows = append(rows, r)
			}
			if store == 1 && len(last) > 0 {
				rows = append(rows, last[0]) // captured again after a leader move
			}
			last = rows
			b.keyframeEvery = int(store) + 2
			b.flush(store, 1000+w*100, rows, cov(start, end, 1000+(w-1)*100, 1000+w*100))
		}
	}
	b.checkpoint(2200)
	return b, 2200
}

// stateAt is what a restore to T from st would write: every key's newest
// version at or before T, read from the plan's files (no cluster).
func stateAt(t *testing.T, st storage.Storage, T uint64) map[string]string {
	t.Helper()
	ctx := context.Background()
	p, err := PlanRestore(ctx, st, T, nil)
	require.NoError(t, err)
	type v struct {
		ts  uint64
		val string
		del bool
	}
	newest := map[string]v{}
	for _, f := range p.Files {
		rd, err := openFile(ctx, st, f)
		require.NoError(t, err)
		it := rd.Iter(nil, nil)
		for it.Next() {
			r := it.Row()
			if r.CommitTS > T {
				continue
			}
			if cur, ok := newest[string(r.Key)]; !ok || r.CommitTS > cur.ts {
				newest[string(r.Key)] = v{r.CommitTS, string(r.Value), r.Op == logfile.OpDelete}
			}
		}
		require.NoError(t, it.Err())
		require.NoError(t, it.Close())
	}
	out := map[string]string{}
	for k, x := range newest {
		if !x.del {
			out[k] = x.val
		}
	}
	return out
}

func TestCompact(t *testing.T) {
	ctx := context.Background()
	b, cp := compactBackup(t)
	points := []uint64{1000, 1150, 1333, 1500, 1777, 1901, 2000, 2111, 2200}
	want := map[uint64]map[string]string{}
	for _, T := range points {
		want[T] = stateAt(t, b.st, T)
	}
	before, err := Load(ctx, b.st)
	require.NoError(t, err)

	res, err := Compact(ctx, b.st, CompactOptions{FileTarget: 1 << 20})
	require.NoError(t, err)
	t.Log(res.Summary())
	// Store 1: chains of 3 (4, the last its newest); store 2: of 4 (3).
	require.Equal(t, 3+2, res.Chains)
	require.Equal(t, 9+8, res.Metas)
	require.Equal(t, 1, res.OutputFiles, "17 small files into one")
	require.NotEmpty(t, res.Compacted)

	after, err := Load(ctx, b.st)
	require.NoError(t, err)
	require.Len(t, after.Metas, len(before.Metas)-res.Metas+1)
	for _, T := range points {
		require.Equal(t, want[T], stateAt(t, b.st, T), "a restore to %d reads the same", T)
	}
	_, err = Verify(ctx, b.st, VerifyOptions{})
	require.NoError(t, err)
	li, err := DescribeLog(ctx, b.st, 0)
	require.NoError(t, err)
	require.Equal(t, 1, li.Compacted)
	require.Empty(t, li.Holes)

	again, err := Compact(ctx, b.st, CompactOptions{})
	require.NoError(t, err)
	require.Zero(t, again.Chains, "nothing sealed is left")
	require.Zero(t, again.RemovedMetas, "within the grace period")

	// After the grace period the superseded metas and files go.
	later := func() time.Time { return time.Now().Add(2 * DefaultCompactGrace) }
	gc, err := Compact(ctx, b.st, CompactOptions{now: later})
	require.NoError(t, err)
	require.Equal(t, res.Metas, gc.RemovedMetas)
	require.Equal(t, res.InputFiles, gc.RemovedFiles)
	for _, T := range points {
		require.Equal(t, want[T], stateAt(t, b.st, T))
	}
	_, err = Verify(ctx, b.st, VerifyOptions{})
	require.NoError(t, err)

	// Truncate then removes the compacted meta once it is all before S.
	testSnapshot{BackupTS: 2000, Task: "cmp"}.write(t, b.st, snapshot.TaskRoot(2000), want[2000])
	tr, err := Truncate(ctx, b.st, 2100, TruncateOptions{})
	require.NoError(t, err)
	require.Equal(t, uint64(2000), tr.UntilTS)
	require.GreaterOrEqual(t, tr.Metas, 1)
	for _, T := range []uint64{2000, 2111, 2200} {
		p, err := PlanRestore(ctx, b.st, T, nil)
		require.NoError(t, err)
		require.Equal(t, uint64(2000), p.Base.BackupTS)
	}

	_, err = Compact(ctx, b.st, CompactOptions{Until: cp + 1})
	require.ErrorIs(t, err, ErrOutOfRange)
}

// TestCompactKilledAtEachStep: a compaction stopped after its outputs, its
// meta, or either half of its clean-up leaves a root that reads the same,
// and later runs finish the work without leaving a file behind.
// TestCompactFileTarget: the outputs are cut at the target (all but the
// last at least that, none over three times it: a file may also take a
// tail under half the target, a row group's overshoot, the rest of a key's
// versions and its footer, which at a 4 KiB target is a large part),
// whatever the target.
func TestCompactFileTarget(t *testing.T) {
	ctx := context.Background()
	b, _ := compactBackup(t)
	const target = 4 << 10
	res, err := Compact(ctx, b.st, CompactOptions{FileTarget: target, Concurrency: 1}) // one part: its files are cut at the target
	require.NoError(t, err)
	t.Log(res.Summary())
	require.GreaterOrEqual(t, res.OutputFiles, 3, "%d bytes of input in files of %d", res.InputBytes, target)
	var files []*pitrpb.DataFile
	for _, m := range mustLoad(t, b.st).Metas {
		if m.Supersedes != nil {
			files = append(files, m.Meta.GetFiles()...)
		}
	}
	require.Len(t, files, res.OutputFiles)
	for i, f := range files {
		if i < len(files)-1 {
			require.GreaterOrEqual(t, f.GetSize(), int64(target), "output %d", i)
		}
		require.Less(t, f.GetSize(), int64(3*target), "output %d", i)
	}
}

func TestCompactKilledAtEachStep(t *testing.T) {
	ctx := context.Background()
	later := func() time.Time { return time.Now().Add(2 * DefaultCompactGrace) }
	for _, stop := range []string{"outputs", "meta", "gc-files", "gc-metas"} {
		t.Run(stop, func(t *testing.T) {
			b, _ := compactBackup(t)
			want := stateAt(t, b.st, 1777)
			objects := countObjects(t, b.st, "")
			killed := errors.New("killed")
			o := CompactOptions{afterStep: func(s string) error {
				if s == stop {
					return killed
				}
				return nil
			}}
			if stop == "gc-files" || stop == "gc-metas" {
				_, err := Compact(ctx, b.st, CompactOptions{})
				require.NoError(t, err)
				o.now = later
			}
			_, err := Compact(ctx, b.st, o)
			require.ErrorIs(t, err, killed)
			require.Equal(t, want, stateAt(t, b.st, 1777))
			_, err = Verify(ctx, b.st, VerifyOptions{})
			require.NoError(t, err)
			// Finish: compact, and clean up after the grace period.
			_, err = Compact(ctx, b.st, CompactOptions{})
			require.NoError(t, err)
			_, err = Compact(ctx, b.st, CompactOptions{now: later})
			require.NoError(t, err)
			require.Equal(t, want, stateAt(t, b.st, 1777))
			li, err := DescribeLog(ctx, b.st, 0)
			require.NoError(t, err)
			require.Equal(t, 1, li.Compacted, "one compacted meta, whatever was killed")
			require.Less(t, countObjects(t, b.st, ""), objects, "the inputs and any orphan are gone")
			var refs int
			for _, m := range mustLoad(t, b.st).Metas {
				refs += len(m.Meta.GetFiles())
			}
			data := countObjects(t, b.st, logfile.LogPrefix) + countObjects(t, b.st, logfile.CompactedPrefix+"data/")
			require.Equal(t, refs, data, "every data file left is referenced")
		})
	}
}

func mustLoad(t *testing.T, st storage.Storage) *Backup {
	t.Helper()
	b, err := Load(context.Background(), st)
	require.NoError(t, err)
	return b
}

// TestCompactLease: a live compaction's lease refuses a second one.
func TestCompactLease(t *testing.T) {
	ctx := context.Background()
	b, _ := compactBackup(t)
	ls, err := snapshot.TakeLease(ctx, b.st, logfile.CompactionLeasePath, "a test", time.Minute, hclog.NewNullLogger())
	require.NoError(t, err)
	defer ls.Release()
	_, err = Compact(ctx, b.st, CompactOptions{})
	require.ErrorIs(t, err, snapshot.ErrConflict)
	require.Contains(t, err.Error(), "is being worked on by")
	_ = keyspace.Format
}

// TestCompactParts: with a file target the inputs fill several times, the
// merge runs in key-range parts at once; their files are sorted, do not
// overlap, are each ≥ the target but the last, and a restore to any T
// reads the same.
func TestCompactParts(t *testing.T) {
	ctx := context.Background()
	b, _ := compactBackup(t)
	points := []uint64{1000, 1150, 1333, 1500, 1777, 1901, 2000, 2111, 2200}
	want := map[uint64]map[string]string{}
	for _, T := range points {
		want[T] = stateAt(t, b.st, T)
	}
	const target = 1 << 10
	res, err := Compact(ctx, b.st, CompactOptions{FileTarget: target, Concurrency: 4})
	require.NoError(t, err)
	t.Log(res.Summary())
	require.Greater(t, res.OutputFiles, 1)

	after, err := Load(ctx, b.st)
	require.NoError(t, err)
	var files []*pitrpb.DataFile
	for _, m := range after.Metas {
		if m.Supersedes != nil {
			files = m.Meta.GetFiles()
		}
	}
	require.Len(t, files, res.OutputFiles)
	for i, f := range files {
		if i > 0 {
			require.Negative(t, bytes.Compare(files[i-1].GetMaxKey(), f.GetMinKey()), "file %d starts after file %d ends", i, i-1)
		}
	}
	for _, T := range points {
		require.Equal(t, want[T], stateAt(t, b.st, T), "a restore to %d reads the same", T)
	}
	_, err = Verify(ctx, b.st, VerifyOptions{})
	require.NoError(t, err)
}

func TestCompactSplits(t *testing.T) {
	file := func(lo, hi string, size int64) FileRef {
		return FileRef{File: &pitrpb.DataFile{MinKey: []byte(lo), MaxKey: []byte(hi), Size: size}}
	}
	for _, tc := range []struct {
		name   string
		inputs []FileRef
		n      int
		want   int // split keys
	}{
		{"one part", []FileRef{file("a", "z", 10)}, 1, 0},
		{"one key", []FileRef{file("k", "k", 10), file("k", "k", 10)}, 4, 0},
		{"even", []FileRef{file("a", "z", 10), file("b", "y", 10)}, 4, 3},
		{"disjoint", []FileRef{file("a", "c", 10), file("x", "z", 10)}, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, splits := compactSplits(tc.inputs, tc.n)
			require.Len(t, splits, tc.want)
			for i, k := range splits {
				if i > 0 {
					require.Negative(t, bytes.Compare(splits[i-1], k))
				}
				require.Positive(t, bytes.Compare(k, []byte("a")))
			}
		})
	}
	// Two equal files apart: the cut lies between them.
	_, splits := compactSplits([]FileRef{file("a", "c", 10), file("x", "z", 10)}, 2)
	require.Positive(t, bytes.Compare(splits[0], []byte("c")))
	require.LessOrEqual(t, bytes.Compare(splits[0], []byte("x")), 0)
}
