package coordinator

import (
	"bytes"
	"fmt"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
)

func rg(s, e string) keyspace.Range { return keyspace.Range{Start: []byte(s), End: []byte(e)} }

// rep is a report on store 1 unless changed.
func rep(id, ver uint64, s, e string, cp uint64) Report {
	return Report{StoreID: 1, RegionID: id, EpochVersion: ver, Start: []byte(s), End: []byte(e), Checkpoint: cp}
}

func rangesStr(rs []keyspace.Range) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, fmt.Sprintf("[%s,%s)", r.Start, r.End))
	}
	return out
}

func TestCompute(t *testing.T) {
	long := rep(3, 1, "m", "", 90)
	long.OldestPendingStartTS = 91
	lagging := rep(2, 1, "g", "m", 95)
	lagging.StoreID, lagging.Reason = 2, "upload slow"
	dupOld := rep(1, 4, "", "", 80)
	dupOld.StoreID = 2

	for _, tc := range []struct {
		name      string
		in        Input
		cp        uint64
		covered   bool
		holes     []string
		stale     int
		invalid   int
		used      int
		slowCause []Cause
	}{{
		name: "no reports: the whole key space is a hole",
		in:   Input{Previous: 10}, cp: 10, holes: []string{"[,)"}, slowCause: []Cause{CauseUncovered},
	}, {
		name: "full cover: min over the cover",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "", "g", 100), rep(2, 1, "g", "m", 95), rep(3, 1, "m", "", 120),
		}},
		cp: 95, covered: true, used: 3, slowCause: []Cause{CauseLagging, CauseLagging, CauseLagging},
	}, {
		name: "monotonic: a lower candidate keeps the previous checkpoint",
		in: Input{Previous: 200, Reports: []Report{
			rep(1, 1, "", "g", 100), rep(2, 1, "g", "", 300),
		}},
		cp: 200, covered: true, used: 2, slowCause: []Cause{CauseLagging, CauseLagging},
	}, {
		name: "hole in the middle pins it",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "", "b", 100), rep(3, 1, "c", "", 100),
		}},
		cp: 10, holes: []string{"[b,c)"}, used: 2, slowCause: []Cause{CauseUncovered, CauseLagging, CauseLagging},
	}, {
		name: "hole at the end (+inf)",
		in:   Input{Previous: 10, Reports: []Report{rep(1, 1, "", "x", 100)}},
		cp:   10, holes: []string{"[x,)"}, used: 1,
		slowCause: []Cause{CauseUncovered, CauseLagging},
	}, {
		name: "split: the stale parent loses to its newer children",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "a", "c", 100), rep(1, 2, "a", "b", 50), rep(4, 2, "b", "c", 60),
		}, Ranges: []keyspace.Range{rg("a", "c")}},
		cp: 50, covered: true, stale: 1, used: 2, slowCause: []Cause{CauseLagging, CauseLagging},
	}, {
		name: "split: a stale parent with a lower checkpoint loses too",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "a", "c", 20), rep(1, 2, "a", "b", 50), rep(4, 2, "b", "c", 60),
		}, Ranges: []keyspace.Range{rg("a", "c")}},
		cp: 50, covered: true, stale: 1, used: 2, slowCause: []Cause{CauseLagging, CauseLagging},
	}, {
		name: "split: a stale parent does not fill its missing child",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "a", "c", 100), rep(1, 2, "a", "b", 50),
		}, Ranges: []keyspace.Range{rg("a", "c")}},
		cp: 10, holes: []string{"[b,c)"}, stale: 1, used: 1, slowCause: []Cause{CauseUncovered, CauseLagging},
	}, {
		name: "merge: both stale sources lose to the merged region",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 5, "a", "b", 50), rep(2, 3, "b", "c", 40), rep(1, 6, "a", "c", 45),
		}, Ranges: []keyspace.Range{rg("a", "c")}},
		cp: 45, covered: true, stale: 2, used: 1, slowCause: []Cause{CauseLagging},
	}, {
		name: "same epoch from two stores (leader moved): the lower counts",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 4, "", "", 90), dupOld,
		}},
		cp: 80, covered: true, used: 2, slowCause: []Cause{CauseLagging, CauseLagging},
	}, {
		name: "reports outside the task ranges are ignored",
		in: Input{Previous: 10, Ranges: []keyspace.Range{rg("a", "m")}, Reports: []Report{
			rep(1, 1, "", "a", 1), rep(2, 1, "a", "m", 70), rep(3, 1, "m", "", 2),
		}},
		cp: 70, covered: true, used: 1, slowCause: []Cause{CauseLagging},
	}, {
		name: "a region wider than the task range covers it",
		in: Input{Previous: 10, Ranges: []keyspace.Range{rg("c", "d")}, Reports: []Report{
			rep(1, 1, "a", "z", 70),
		}},
		cp: 70, covered: true, used: 1, slowCause: []Cause{CauseLagging},
	}, {
		name: "the gap between task ranges needs no cover",
		in: Input{Previous: 10, Ranges: []keyspace.Range{rg("a", "c"), rg("x", "z")}, Reports: []Report{
			rep(1, 1, "a", "c", 70), rep(2, 1, "x", "z", 60),
		}},
		cp: 60, covered: true, used: 2, slowCause: []Cause{CauseLagging, CauseLagging},
	}, {
		name: "holes are clipped to the task ranges and merged",
		in: Input{Previous: 10, Ranges: []keyspace.Range{rg("a", "f"), rg("x", "")}, Reports: []Report{
			rep(1, 1, "", "b", 70), rep(2, 7, "y", "z", 60),
		}},
		cp: 10, holes: []string{"[b,f)", "[x,y)", "[z,)"}, used: 2,
		slowCause: []Cause{CauseUncovered, CauseUncovered, CauseUncovered, CauseLagging, CauseLagging},
	}, {
		name: "invalid reports are counted and skipped",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "", "", 70), rep(2, 1, "q", "q", 1), rep(3, 1, "z", "a", 1),
		}},
		cp: 70, covered: true, invalid: 2, used: 1, slowCause: []Cause{CauseLagging},
	}, {
		name: "long transaction and lagging store reasons",
		in: Input{Previous: 10, Reports: []Report{
			rep(1, 1, "", "g", 100), lagging, long,
		}},
		cp: 90, covered: true, used: 3, slowCause: []Cause{CauseLongTxn, CauseLagging, CauseLagging},
	}, {
		name: "MaxSlow bounds the list",
		in: Input{Previous: 10, MaxSlow: 1, Reports: []Report{
			rep(1, 1, "", "g", 100), rep(2, 1, "g", "m", 95), rep(3, 1, "m", "", 120),
		}},
		cp: 95, covered: true, used: 3, slowCause: []Cause{CauseLagging},
	}, {
		name: "MaxSlow < 0 lists nothing",
		in:   Input{Previous: 10, MaxSlow: -1, Reports: []Report{rep(1, 1, "", "g", 100)}},
		cp:   10, holes: []string{"[g,)"}, used: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			res := Compute(tc.in)
			require.Equal(t, tc.cp, res.Checkpoint, "checkpoint")
			require.Equal(t, tc.covered, res.Covered, "covered")
			if tc.holes == nil {
				tc.holes = []string{}
			}
			require.Equal(t, tc.holes, rangesStr(res.Uncovered), "holes")
			require.Equal(t, tc.stale, res.Stale, "stale")
			require.Equal(t, tc.invalid, res.Invalid, "invalid")
			require.Equal(t, tc.used, res.Used, "used")
			var causes []Cause
			for _, s := range res.Slowest {
				causes = append(causes, s.Cause)
				require.NotEmpty(t, s.Reason)
			}
			require.Equal(t, tc.slowCause, causes, "slowest causes")
			require.GreaterOrEqual(t, res.Checkpoint, tc.in.Previous, "I2")
			if !res.Covered {
				require.Zero(t, res.Candidate)
			}
		})
	}
}

func TestComputeSlowestDetail(t *testing.T) {
	long := rep(3, 1, "m", "", 90)
	long.OldestPendingStartTS = 91
	lagging := rep(2, 1, "g", "m", 95)
	lagging.StoreID, lagging.Reason = 2, "upload slow"
	res := Compute(Input{Reports: []Report{rep(1, 1, "", "g", 100), lagging, long}})
	require.Equal(t, uint64(90), res.Candidate)
	s := res.Slowest
	require.Equal(t, Slow{Cause: CauseLongTxn, Range: rg("m", ""), RegionID: 3, StoreID: 1, EpochVersion: 1,
		Checkpoint: 90, StartTS: 91, Reason: "long transaction: a prewrite with start_ts 91 is still pending"}, s[0])
	require.Equal(t, CauseLagging, s[1].Cause)
	require.Equal(t, uint64(2), s[1].StoreID)
	require.Equal(t, "store 2 has not flushed this region further (agent: upload slow)", s[1].Reason)
	require.Equal(t, "long-txn", CauseLongTxn.String())
	require.Equal(t, "uncovered", CauseUncovered.String())
	require.Equal(t, "lagging-store", CauseLagging.String())
}

// TestComputeMatchesReference checks Compute against a direct, quadratic
// reading of the rules on random overlapping reports over one-byte keys.
func TestComputeMatchesReference(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	keys := []string{"", "a", "b", "c", "d", "e", "f"}
	for iter := 0; iter < 3000; iter++ {
		var reps []Report
		for n := rnd.Intn(7); n > 0; n-- {
			s, e := keys[rnd.Intn(len(keys))], keys[rnd.Intn(len(keys))]
			reps = append(reps, rep(uint64(n), uint64(rnd.Intn(3)), s, e, uint64(10+rnd.Intn(50))))
		}
		var task []keyspace.Range
		for n := rnd.Intn(3); n > 0; n-- {
			task = append(task, rg(keys[rnd.Intn(len(keys))], keys[rnd.Intn(len(keys))]))
		}
		in := Input{Ranges: task, Previous: uint64(rnd.Intn(40)), Reports: reps}
		got := Compute(in)
		want, wantHoles := reference(in)
		require.Equal(t, want.Checkpoint, got.Checkpoint, "iter %d: %+v", iter, in)
		require.Equal(t, want.Covered, got.Covered, "iter %d", iter)
		require.Equal(t, want.Candidate, got.Candidate, "iter %d", iter)
		require.Equal(t, want.Stale, got.Stale, "iter %d", iter)
		var gotHoles []bool
		for _, k := range samples() {
			in := false
			for _, h := range got.Uncovered {
				in = in || h.Contains(k)
			}
			gotHoles = append(gotHoles, in)
		}
		require.Equal(t, wantHoles, gotHoles, "iter %d: %+v -> %v", iter, in, rangesStr(got.Uncovered))
		for i := 1; i < len(got.Uncovered); i++ {
			require.NotEqual(t, got.Uncovered[i-1].End, got.Uncovered[i].Start, "holes merged")
		}
	}
}

// samples are keys that fall in every distinct interval of one-byte keys.
func samples() [][]byte {
	out := [][]byte{{}, {0}}
	for c := byte('a'); c <= 'f'; c++ {
		out = append(out, []byte{c}, []byte{c, 0})
	}
	return out
}

// reference evaluates the rules key by key; it returns the result and, per
// sample key, whether it lies in a hole.
func reference(in Input) (Result, []bool) {
	res := Result{Checkpoint: in.Previous}
	valid := func(r Report) bool { return len(r.End) == 0 || bytes.Compare(r.Start, r.End) < 0 }
	overlaps := func(a, b Report) bool {
		return (len(b.End) == 0 || bytes.Compare(a.Start, b.End) < 0) && (len(a.End) == 0 || bytes.Compare(b.Start, a.End) < 0)
	}
	var live []Report
	for _, r := range in.Reports {
		if !valid(r) {
			continue
		}
		stale := false
		for _, o := range in.Reports {
			stale = stale || (valid(o) && overlaps(r, o) && o.EpochVersion > r.EpochVersion)
		}
		if stale {
			res.Stale++
		} else {
			live = append(live, r)
		}
	}
	task := keyspace.Normalize(in.Ranges)
	first, covered := true, true
	var cand uint64
	var holes []bool
	for _, k := range samples() {
		inTask := false
		for _, tr := range task {
			inTask = inTask || tr.Contains(k)
		}
		best, ok := uint64(0), false
		for _, r := range live {
			if (keyspace.Range{Start: r.Start, End: r.End}).Contains(k) && (!ok || r.Checkpoint < best) {
				best, ok = r.Checkpoint, true
			}
		}
		holes = append(holes, inTask && !ok)
		switch {
		case !inTask:
		case !ok:
			covered = false
		case first || best < cand:
			cand, first = best, false
		}
	}
	res.Covered = covered
	if covered {
		res.Candidate = cand
		res.Checkpoint = max(in.Previous, cand)
	}
	return res, holes
}

func TestCompute100k(t *testing.T) {
	reps := syntheticReports(100_000, 3, 1)
	res := Compute(Input{Previous: 1, Reports: reps})
	require.True(t, res.Covered)
	require.Equal(t, 100_000, res.Used)
	require.Equal(t, uint64(1000), res.Candidate)
	require.Len(t, res.Slowest, DefaultMaxSlow)
	// A stale copy of every tenth region, as if just split: all lose.
	for i := 0; i < 100_000; i += 10 {
		r := reps[i]
		r.EpochVersion = 0
		r.Checkpoint = 1
		reps = append(reps, r)
	}
	res = Compute(Input{Previous: 1, Reports: reps})
	require.Equal(t, 10_000, res.Stale)
	require.Equal(t, uint64(1000), res.Candidate)
}

// syntheticReports tiles the key space with n regions on stores 1..stores,
// checkpoints 1000 + (i*7919 mod n), shuffled as agents would interleave.
func syntheticReports(n, stores int, seed int64) []Report {
	reps := make([]Report, n)
	key := func(i int) []byte {
		if i == 0 {
			return nil
		}
		return []byte(fmt.Sprintf("t\x80\x00\x00\x00\x00\x00\x00\x2a_r%012d", i*1000))
	}
	for i := range reps {
		reps[i] = Report{
			StoreID: uint64(i%stores + 1), RegionID: uint64(i + 1), EpochVersion: 5,
			Start: key(i), Checkpoint: 1000 + uint64(i*7919%n),
		}
		if i+1 < n {
			reps[i].End = key(i + 1)
		}
	}
	rnd := rand.New(rand.NewSource(seed))
	rnd.Shuffle(len(reps), func(i, j int) { reps[i], reps[j] = reps[j], reps[i] })
	return reps
}

func BenchmarkCompute100k(b *testing.B) {
	reps := syntheticReports(100_000, 3, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		Compute(Input{Previous: 1, Reports: reps})
	}
}
