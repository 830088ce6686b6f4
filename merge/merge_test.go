package merge

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"testing"

	"github.com/pitr-io/pitr/logfile"
	"github.com/stretchr/testify/require"
)

func row(k string, ts uint64, v string) *logfile.Row {
	return &logfile.Row{Key: []byte(k), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(v)}
}

// collect drains it, copying rows.
func collect(t *testing.T, it logfile.Iterator) []*logfile.Row {
	t.Helper()
	var out []*logfile.Row
	for it.Next() {
		out = append(out, it.Row().Clone())
	}
	require.NoError(t, it.Err())
	require.NoError(t, it.Close())
	return out
}

// bruteForce sorts all rows (stably, so the earliest input wins) and drops
// duplicates.
func bruteForce(runs [][]*logfile.Row) []*logfile.Row {
	var all []*logfile.Row
	for _, r := range runs {
		all = append(all, r...)
	}
	Sort(all)
	var out []*logfile.Row
	for _, r := range all {
		if n := len(out); n > 0 && logfile.Compare(out[n-1], r) == 0 {
			continue
		}
		out = append(out, r)
	}
	return out
}

func TestMerge(t *testing.T) {
	for _, tc := range []struct {
		name string
		runs [][]*logfile.Row
	}{
		{"none", nil},
		{"empty-inputs", [][]*logfile.Row{{}, {}, nil}},
		{"one", [][]*logfile.Row{{row("a", 5, "1"), row("a", 3, "2"), row("b", 9, "3")}}},
		{"dup-within-run", [][]*logfile.Row{{row("a", 5, "1"), row("a", 5, "1"), row("a", 5, "1")}}},
		{"dup-across-runs-first-wins", [][]*logfile.Row{{row("a", 5, "first")}, {row("a", 5, "second")}}},
		{"interleaved", [][]*logfile.Row{
			{row("a", 9, ""), row("c", 9, ""), row("e", 1, "")},
			{},
			{row("a", 8, ""), row("b", 1, ""), row("e", 2, "")},
		}},
		{"versions-desc", [][]*logfile.Row{{row("k", 9, ""), row("k", 5, "")}, {row("k", 7, ""), row("k", 5, ""), row("k", 1, "")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var its []logfile.Iterator
			for _, r := range tc.runs {
				its = append(its, Slice(r))
			}
			require.Equal(t, bruteForce(tc.runs), nilIfEmpty(collect(t, Merge(its...))))
		})
	}
}

func nilIfEmpty(r []*logfile.Row) []*logfile.Row {
	if len(r) == 0 {
		return nil
	}
	return r
}

func TestMergeRandom(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < 50; round++ {
		nruns := rng.Intn(20)
		runs := make([][]*logfile.Row, nruns)
		for i := range runs {
			n := rng.Intn(200)
			for j := 0; j < n; j++ {
				k := fmt.Sprintf("k%03d", rng.Intn(100))
				runs[i] = append(runs[i], row(k, uint64(1+rng.Intn(20)), fmt.Sprintf("run%d", i)))
			}
			Sort(runs[i])
		}
		var its []logfile.Iterator
		for _, r := range runs {
			its = append(its, Slice(r))
		}
		got := collect(t, Merge(its...))
		require.Equal(t, bruteForce(runs), nilIfEmpty(got), "round %d", round)
	}
}

// TestMergeFiles merges real data files, whose rows are only valid until
// the next Next of their iterator.
func TestMergeFiles(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	var runs [][]*logfile.Row
	var its []logfile.Iterator
	for i := 0; i < 5; i++ {
		var rows []*logfile.Row
		for j := 0; j < 500; j++ {
			rows = append(rows, row(fmt.Sprintf("key-%04d", rng.Intn(400)), uint64(2+rng.Intn(5)), "v"))
		}
		Sort(rows)
		runs = append(runs, rows)
		var buf bytes.Buffer
		w, err := logfile.NewWriter(&buf, logfile.WriterOptions{RowGroupBytes: 1 << 10})
		require.NoError(t, err)
		n, err := Copy(w, Slice(rows))
		require.NoError(t, err)
		require.Equal(t, int64(len(rows)), n)
		_, err = w.Close()
		require.NoError(t, err)
		rd, err := logfile.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		require.NoError(t, err)
		its = append(its, rd.Iter(nil, nil))
	}
	require.Equal(t, bruteForce(runs), collect(t, Merge(its...)))
}

type errIter struct {
	logfile.Iterator
	err    error
	closed bool
}

func (e *errIter) Next() bool   { return false }
func (e *errIter) Err() error   { return e.err }
func (e *errIter) Close() error { e.closed = true; return nil }

func TestMergeInputError(t *testing.T) {
	boom := errors.New("boom")
	bad := &errIter{err: boom}
	m := Merge(Slice([]*logfile.Row{row("a", 1, "")}), bad)
	require.False(t, m.Next())
	require.ErrorIs(t, m.Err(), boom)
	require.NoError(t, m.Close())
	require.True(t, bad.closed)
}
