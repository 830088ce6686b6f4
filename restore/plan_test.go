package restore

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
)

func cov(start, end string, from, to uint64) *pitrpb.RegionCoverage {
	return &pitrpb.RegionCoverage{StartKey: []byte(start), EndKey: []byte(end), FromTs: from, ToTs: to}
}

func dfile(path, minKey, maxKey string, minTS, maxTS uint64) *pitrpb.DataFile {
	return &pitrpb.DataFile{Path: path, Size: 100, Sha256: make([]byte, 32), Rows: 10, MinKey: []byte(minKey), MaxKey: []byte(maxKey),
		MinCommitTs: minTS, MaxCommitTs: maxTS, LogicalBytes: 1000}
}

func meta(path string, files []*pitrpb.DataFile, regions ...*pitrpb.RegionCoverage) MetaFile {
	return MetaFile{Path: path, Meta: &pitrpb.Meta{FormatVersion: 1, Files: files, Regions: regions}}
}

// snapInfo is a finished snapshot at ts under the task root, backing up
// [start, end) of cluster 7 in two checksummed parts split at "k", with
// one data file.
func snapInfo(ts uint64, start, end string) snapshot.Info {
	root := snapshot.TaskRoot(ts)
	name := map[uint64]string{150: "a", 160: "b"}[ts]
	if name == "" {
		name = "x"
	}
	f := dfile(snapshot.FilePath(name), "a", "y", ts, ts)
	rng := &pitrpb.KeyRange{StartKey: []byte(start), EndKey: []byte(end)}
	return snapshot.Info{Root: root, BackupTS: ts, Meta: &pitrpb.BackupMeta{BackupTs: ts, ClusterId: 7, Task: "t1",
		Ranges: []*pitrpb.KeyRange{rng}, Files: []*pitrpb.DataFile{f},
		Checksums: []*pitrpb.RangeChecksum{
			{Range: &pitrpb.KeyRange{StartKey: []byte(start), EndKey: []byte("k")}},
			{Range: &pitrpb.KeyRange{StartKey: []byte("k"), EndKey: []byte(end)}},
		}}}
}

// rootOwn moves a snapshot to the top of a root of its own (--snapshot).
func rootOwn(s snapshot.Info) snapshot.Info { s.Root = ""; return s }

func withCluster(s snapshot.Info, id uint64) snapshot.Info { s.Meta.ClusterId = id; return s }

func TestPlan(t *testing.T) {
	task := &pitrpb.TaskInfo{Name: "t1", StartTs: 100, StartedEmpty: true, ClusterId: 7}
	notEmpty := &pitrpb.TaskInfo{Name: "t1", StartTs: 100, ClusterId: 7}
	snaps := []snapshot.Info{
		{Root: "snapshot/0000000000000082/", BackupTS: 130}, // unfinished
		snapInfo(150, "", ""), snapInfo(160, "", ""),
		snapInfo(400, "", ""), // after the checkpoint
	}
	full := []MetaFile{
		meta("meta/a", []*pitrpb.DataFile{dfile("log/1", "a", "m", 101, 150)}, cov("", "m", 100, 150), cov("m", "", 100, 150)),
		meta("meta/b", []*pitrpb.DataFile{dfile("log/2", "c", "z", 151, 200), dfile("log/1", "a", "m", 101, 150)},
			cov("", "m", 150, 200), cov("m", "", 150, 200)),
		meta("meta/c", []*pitrpb.DataFile{dfile("log/3", "b", "x", 201, 300), {Path: "log/empty", Sha256: make([]byte, 32)}},
			cov("", "", 200, 300)),
	}
	for _, tc := range []struct {
		name      string
		task      *pitrpb.TaskInfo
		cp        uint64
		metas     []MetaFile
		ts        uint64
		snaps     []snapshot.Info
		explicit  bool
		base      uint64 // the chosen base's backup ts (0: none)
		err       error
		errText   string
		files     []string
		units     int
		rangesOut []keyspace.Range
	}{
		{name: "T = start restores nothing yet needs no file after it", cp: 300, metas: full, ts: 100, files: []string{}, units: 2},
		{name: "middle", cp: 300, metas: full, ts: 160, files: []string{"log/1", "log/2"}, units: 2},
		{name: "checkpoint", cp: 300, metas: full, ts: 300, files: []string{"log/1", "log/2", "log/3"}, units: 2},
		{name: "exactly a file's min commit", cp: 300, metas: full, ts: 201, files: []string{"log/1", "log/2", "log/3"}, units: 2},
		{name: "past checkpoint", cp: 300, metas: full, ts: 301, err: ErrOutOfRange, errText: "restorable range is [100 ("},
		{name: "before start", cp: 300, metas: full, ts: 99, err: ErrOutOfRange, errText: "restorable range is [100 ("},
		{name: "not started empty, no snapshot", task: notEmpty, cp: 300, metas: full, ts: 200, err: ErrNoBase,
			errText: "take one with `pitr backup full --storage URL --pd ADDRS`"},
		{name: "newest snapshot at or before T", task: notEmpty, cp: 300, metas: full, ts: 250, snaps: snaps, base: 160,
			files: []string{"snapshot/00000000000000a0/files/b.parquet", "log/2", "log/3"}, units: 3},
		{name: "snapshot at T exactly", task: notEmpty, cp: 300, metas: full, ts: 160, snaps: snaps, base: 160,
			files: []string{"snapshot/00000000000000a0/files/b.parquet", "log/2"}, units: 3},
		{name: "older snapshot: log files above it kept, those at or below pruned", task: notEmpty, cp: 300, metas: full, ts: 159, snaps: snaps, base: 150,
			files: []string{"snapshot/0000000000000096/files/a.parquet", "log/2"}, units: 3},
		{name: "started empty uses a snapshot when there is one", cp: 300, metas: full, ts: 250, snaps: snaps, base: 160,
			files: []string{"snapshot/00000000000000a0/files/b.parquet", "log/2", "log/3"}, units: 3},
		{name: "started empty, T before every snapshot: log only", cp: 300, metas: full, ts: 140, snaps: snaps, files: []string{"log/1"}, units: 2},
		{name: "T before the first snapshot", task: notEmpty, cp: 300, metas: full, ts: 140, snaps: snaps, err: ErrOutOfRange,
			errText: "restorable range is [150 ("},
		{name: "only snapshot after the checkpoint", task: notEmpty, cp: 300, metas: full, ts: 250, snaps: snaps[3:], err: ErrOutOfRange,
			errText: "is after the global checkpoint 300 ("},
		{name: "unfinished snapshot is not a base", task: notEmpty, cp: 300, metas: full, ts: 250,
			snaps: []snapshot.Info{{Root: "snapshot/00000000000000c8/", BackupTS: 200}}, err: ErrNoBase},
		{name: "snapshot before the task's start is not a base", task: notEmpty, cp: 300, metas: full, ts: 250,
			snaps: []snapshot.Info{snapInfo(90, "", "")}, err: ErrNoBase},
		{name: "explicit snapshot", task: notEmpty, cp: 300, metas: full, ts: 250, explicit: true,
			snaps: []snapshot.Info{rootOwn(snapInfo(150, "", ""))}, base: 150, files: []string{"files/a.parquet", "log/2", "log/3"}, units: 3},
		{name: "explicit snapshot after T", task: notEmpty, cp: 300, metas: full, ts: 140, explicit: true,
			snaps: []snapshot.Info{rootOwn(snapInfo(150, "", ""))}, err: ErrOutOfRange, errText: "needs one in [100 ("},
		{name: "explicit snapshot not covering", task: notEmpty, cp: 300, metas: full, ts: 250, explicit: true,
			snaps: []snapshot.Info{rootOwn(snapInfo(150, "", "q"))}, err: ErrNoBase, errText: "does not cover the task ranges"},
		{name: "snapshot of another cluster", task: notEmpty, cp: 300, metas: full, ts: 250,
			snaps: []snapshot.Info{withCluster(snapInfo(150, "", ""), 8)}, err: ErrNotBackup, errText: "is of cluster 8 but task \"t1\" backs up cluster 7"},
		{name: "snapshot not covering is passed over", task: notEmpty, cp: 300, metas: full, ts: 250,
			snaps: []snapshot.Info{snapInfo(150, "", ""), snapInfo(160, "b", "")}, base: 150,
			files: []string{"snapshot/0000000000000096/files/a.parquet", "log/2", "log/3"}, units: 3},
		{name: "only a snapshot not covering", task: notEmpty, cp: 300, metas: full, ts: 250,
			snaps: []snapshot.Info{snapInfo(160, "b", "")}, err: ErrNoBase, errText: "does not cover"},
		{name: "coverage hole in time", cp: 300, metas: []MetaFile{full[0], full[2]}, ts: 250, err: ErrMissing,
			errText: `keys [-inf, +inf) have no log for commit_ts (150 (`},
		{name: "hole after T does not matter", cp: 300, metas: []MetaFile{full[0], full[1]}, ts: 200, files: []string{"log/1", "log/2"}, units: 2},
		{name: "no metas and T > start", cp: 300, ts: 101, err: ErrMissing},
		{name: "task ranges prune files and units",
			task: &pitrpb.TaskInfo{Name: "t1", StartTs: 100, StartedEmpty: true, Ranges: []*pitrpb.KeyRange{
				{StartKey: []byte("n"), EndKey: []byte("p")}, {StartKey: []byte("a"), EndKey: []byte("b")}, {StartKey: []byte("o"), EndKey: []byte("q")}}},
			cp: 300, metas: full, ts: 300, files: []string{"log/1", "log/2", "log/3"}, units: 2,
			rangesOut: []keyspace.Range{{Start: []byte("a"), End: []byte("b")}, {Start: []byte("n"), End: []byte("q")}}},
		{
			name: "range outside every file",
			task: &pitrpb.TaskInfo{Name: "t1", StartTs: 100, StartedEmpty: true, Ranges: []*pitrpb.KeyRange{{StartKey: []byte("zz")}}},
			cp:   300, metas: full, ts: 300, files: []string{}, units: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tk := task
			if tc.task != nil {
				tk = tc.task
			}
			p, err := NewPlan(PlanInput{Task: tk, Checkpoint: tc.cp, Metas: tc.metas, RestoreTS: tc.ts,
				Snapshots: tc.snaps, Explicit: tc.explicit, SnapshotURL: "file:///backup"})
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.Contains(t, err.Error(), tc.errText)
				require.NotContains(t, err.Error(), "\n")
				return
			}
			require.NoError(t, err)
			got := []string{}
			for _, f := range p.Files {
				got = append(got, f.Key())
			}
			if tc.base == 0 {
				require.Nil(t, p.Base)
				require.Equal(t, tk.GetStartTs(), p.LogFrom)
			} else {
				require.NotNil(t, p.Base)
				require.Equal(t, tc.base, p.Base.BackupTS)
				require.Equal(t, tc.base, p.LogFrom)
			}
			require.Equal(t, tc.files, got)
			require.Len(t, p.Units, tc.units)
			if tc.rangesOut != nil {
				require.Equal(t, tc.rangesOut, p.Ranges)
			}
			var sb strings.Builder
			require.NoError(t, p.Print(&sb))
			require.Contains(t, sb.String(), keyspace.Format(tc.ts))
		})
	}
}

func TestSplitUnits(t *testing.T) {
	ms := []MetaFile{meta("m", nil, cov("", "c", 1, 2), cov("c", "f", 1, 2), cov("f", "", 1, 2), cov("b", "d", 2, 3))}
	covers, err := CoverageOf(ms)
	require.NoError(t, err)
	units := splitUnits([]keyspace.Range{{End: []byte("e")}, {Start: []byte("x")}}, covers)
	var got []string
	for _, u := range units {
		got = append(got, u.String())
	}
	require.Equal(t, []string{`[-inf, "b")`, `["b", "c")`, `["c", "d")`, `["d", "e")`, `["x", +inf)`}, got)
}

func TestSplitJobs(t *testing.T) {
	units := []keyspace.Range{
		{End: []byte("b")}, {Start: []byte("b"), End: []byte("c")}, {Start: []byte("c"), End: []byte("d")},
		{Start: []byte("x"), End: []byte("y")}, {Start: []byte("y")},
	}
	big := func(minK, maxK string, n int64) FileRef {
		f := dfile("f", minK, maxK, 1, 1)
		f.LogicalBytes = n
		return FileRef{File: f}
	}
	for _, tc := range []struct {
		name   string
		files  []FileRef
		target int64
		want   [][2]int
	}{
		{name: "no data: one job per contiguous run", target: 10, want: [][2]int{{0, 3}, {3, 5}}},
		{name: "balanced", files: []FileRef{big("a", "c5", 300)}, target: 100, want: [][2]int{{0, 1}, {1, 2}, {2, 3}, {3, 5}}},
		{name: "two per job", files: []FileRef{big("a", "c5", 300), big("x", "z", 200)}, target: 150,
			want: [][2]int{{0, 2}, {2, 3}, {3, 5}}},
		{name: "one file at a boundary", files: []FileRef{big("c", "c", 1000)}, target: 10, want: [][2]int{{0, 3}, {3, 5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got [][2]int
			for _, j := range splitJobs(units, tc.files, tc.target) {
				got = append(got, [2]int{j.first, j.last})
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestCoverageCases(t *testing.T) {
	all := []keyspace.Range{{}}
	for _, tc := range []struct {
		name     string
		ranges   []keyspace.Range
		rects    []rect
		from, to uint64
		hole     string // "" = none
	}{
		{name: "empty window", ranges: all, from: 5, to: 5},
		{name: "no rects", ranges: all, from: 5, to: 9, hole: `keys [-inf, +inf) have no log for commit_ts (5 (`},
		{name: "exact", ranges: all, rects: []rect{{keys: keyspace.Range{}, from: 5, to: 9}}, from: 5, to: 9},
		{name: "two halves in time", ranges: all, rects: []rect{{from: 5, to: 7}, {from: 7, to: 9}}, from: 5, to: 9},
		{name: "gap in time", ranges: all, rects: []rect{{from: 5, to: 6}, {from: 7, to: 9}}, from: 5, to: 9,
			hole: `keys [-inf, +inf) have no log for commit_ts (6 (`},
		{name: "gap in keys", ranges: all, rects: []rect{
			{keys: keyspace.Range{End: []byte("b")}, from: 5, to: 9}, {keys: keyspace.Range{Start: []byte("c")}, from: 5, to: 9}},
			from: 5, to: 9, hole: `keys ["b", "c") have no log for commit_ts (5 (`},
		{
			name:   "gap outside the task ranges",
			ranges: []keyspace.Range{{End: []byte("b")}, {Start: []byte("c"), End: []byte("d")}},
			rects:  []rect{{keys: keyspace.Range{End: []byte("b")}, from: 5, to: 9}, {keys: keyspace.Range{Start: []byte("c")}, from: 5, to: 9}},
			from:   5, to: 9,
		},
		{name: "split region, old epoch covers early, children later", ranges: all, rects: []rect{
			{from: 1, to: 6},
			{keys: keyspace.Range{End: []byte("m")}, from: 6, to: 9},
			{keys: keyspace.Range{Start: []byte("m")}, from: 6, to: 8}},
			from: 5, to: 9, hole: `keys ["m", +inf) have no log for commit_ts (8 (`},
		{name: "overlaps beyond the window", ranges: all, rects: []rect{{from: 0, to: 100}}, from: 5, to: 9},
		{name: "first hole by key then time", ranges: all, rects: []rect{
			{keys: keyspace.Range{End: []byte("k")}, from: 5, to: 6}, {keys: keyspace.Range{End: []byte("k")}, from: 8, to: 9},
			{keys: keyspace.Range{Start: []byte("k")}, from: 5, to: 7}},
			from: 5, to: 9, hole: `keys [-inf, "k") have no log for commit_ts (6 (`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := findHole(tc.ranges, tc.rects, tc.from, tc.to)
			if tc.hole == "" {
				require.Nil(t, h)
				return
			}
			require.NotNil(t, h)
			require.Contains(t, h.String(), tc.hole)
		})
	}
}

// TestCoverageRandom checks the sweep against a brute-force grid over small
// random key and time spaces.
func TestCoverageRandom(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	key := func(i int) []byte {
		if i == 0 {
			return nil
		}
		return []byte{byte('a' + i)}
	}
	const nk, nt = 8, 12
	for iter := 0; iter < 3000; iter++ {
		var rects []rect
		for n := rng.Intn(8); n > 0; n-- {
			a, b := rng.Intn(nk), rng.Intn(nk+1)
			if b != nk && b <= a {
				continue
			}
			end := key(b)
			if b == nk {
				end = nil
			}
			f := uint64(rng.Intn(nt))
			rects = append(rects, rect{keys: keyspace.Range{Start: key(a), End: end}, from: f, to: f + uint64(rng.Intn(nt-int(f))+1)})
		}
		ranges := []keyspace.Range{{}}
		if rng.Intn(2) == 0 {
			ranges = []keyspace.Range{{Start: key(1), End: key(3)}, {Start: key(5)}}
		}
		from := uint64(rng.Intn(nt))
		to := from + uint64(rng.Intn(nt-int(from)))
		// Brute force: every key cell (points a.. so cells are [key(i), key(i+1)))
		// and every ts unit (s, s+1].
		var want *Hole
	grid:
		for i := 0; i < nk; i++ {
			k := key(i)
			if !inRanges(ranges, k) {
				continue
			}
			for s := from; s < to; s++ {
				covered := false
				for _, r := range rects {
					if r.keys.Contains(k) && r.from <= s && s+1 <= r.to {
						covered = true
					}
				}
				if !covered {
					want = &Hole{Keys: keyspace.Range{Start: k}, From: s, To: s + 1}
					break grid
				}
			}
		}
		got := findHole(ranges, rects, from, to)
		desc := fmt.Sprintf("iter %d: rects %+v ranges %v window (%d,%d]", iter, rects, ranges, from, to)
		if want == nil {
			require.Nil(t, got, desc)
			continue
		}
		require.NotNil(t, got, desc)
		require.True(t, bytes.Compare(got.Keys.Start, want.Keys.Start) <= 0 && got.Keys.Contains(want.Keys.Start), "%s: got %v want start %q", desc, got, want.Keys.Start)
		require.Equal(t, want.From, got.From, desc)
		require.GreaterOrEqual(t, got.To, want.To, desc)
	}
}
