package logfile

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"github.com/apache/arrow/go/v14/parquet/compress"
	"math/rand"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// randRows returns n rows in Compare order: binary keys sharing prefixes,
// several versions per key, empty values, deletes, old values, duplicates.
func randRows(rng *rand.Rand, n int, bigEvery int) []*Row {
	rows := make([]*Row, 0, n)
	for len(rows) < n {
		k := make([]byte, rng.Intn(40))
		rng.Read(k)
		if rng.Intn(3) == 0 && len(rows) > 0 { // share a prefix with another key
			p := rows[rng.Intn(len(rows))].Key
			k = append(bytes.Clone(p[:rng.Intn(len(p)+1)]), k[:rng.Intn(len(k)+1)]...)
		}
		versions := 1 + rng.Intn(3)
		for v := 0; v < versions && len(rows) < n; v++ {
			r := &Row{Key: bytes.Clone(k), StartTS: uint64(rng.Int63n(1 << 50)), Op: OpPut}
			r.CommitTS = r.StartTS + 1 + uint64(rng.Intn(1000))
			switch rng.Intn(6) {
			case 0:
				r.Op = OpDelete
			case 1:
				r.Value = []byte{}
			default:
				size := rng.Intn(300)
				if bigEvery > 0 && rng.Intn(bigEvery) == 0 {
					size = 1 << 20
				}
				r.Value = make([]byte, size)
				rng.Read(r.Value)
			}
			if rng.Intn(4) == 0 {
				r.HasOldValue = true
				r.OldValue = make([]byte, rng.Intn(20))
				rng.Read(r.OldValue)
			}
			rows = append(rows, r)
			if rng.Intn(20) == 0 {
				rows = append(rows, r.Clone()) // a duplicate
			}
		}
	}
	slices.SortStableFunc(rows, Compare)
	return rows[:n]
}

func writeFile(t testing.TB, rows []*Row, opts WriterOptions) ([]byte, Stats) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	require.NoError(t, err)
	for _, r := range rows {
		require.NoError(t, w.Write(r))
	}
	st, err := w.Close()
	require.NoError(t, err)
	return buf.Bytes(), st
}

func readAll(t testing.TB, it Iterator) []*Row {
	t.Helper()
	var out []*Row
	for it.Next() {
		out = append(out, it.Row().Clone())
	}
	require.NoError(t, it.Err())
	require.NoError(t, it.Close())
	return out
}

func requireRowsEqual(t testing.TB, want, got []*Row) {
	t.Helper()
	require.Equal(t, len(want), len(got), "row count")
	for i := range want {
		w, g := *want[i], *got[i]
		if w.Op == OpDelete {
			w.Value = nil
		}
		if !w.HasOldValue {
			w.OldValue = nil
		}
		if w.Value != nil && len(w.Value) == 0 {
			w.Value = []byte{}
		}
		if w.HasOldValue && len(w.OldValue) == 0 {
			w.OldValue = []byte{}
		}
		if len(w.Key) == 0 {
			w.Key, g.Key = nil, nil
		}
		require.Equal(t, w, g, "row %d", i)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		big  int
		opts WriterOptions
	}{
		{name: "empty", n: 0},
		{name: "one", n: 1},
		{name: "small-row-groups", n: 5000, opts: WriterOptions{RowGroupBytes: 16 << 10}},
		{name: "default", n: 5000},
		{name: "big-values", n: 300, big: 50, opts: WriterOptions{RowGroupBytes: 1 << 20}},
		{name: "uncompressed", n: 3000, opts: WriterOptions{RowGroupBytes: 32 << 10, Compression: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(len(tc.name))))
			rows := randRows(rng, tc.n, tc.big)
			data, st := writeFile(t, rows, tc.opts)

			require.Equal(t, int64(len(data)), st.Size)
			require.Equal(t, sha256.Sum256(data), st.SHA256)
			require.Equal(t, int64(len(rows)), st.Rows)
			if len(rows) > 0 {
				require.Equal(t, rows[0].Key, st.MinKey)
				require.Equal(t, rows[len(rows)-1].Key, st.MaxKey)
				var lb int64
				minC, maxC, minS := rows[0].CommitTS, rows[0].CommitTS, rows[0].StartTS
				for _, r := range rows {
					lb += r.LogicalSize()
					minC, maxC, minS = min(minC, r.CommitTS), max(maxC, r.CommitTS), min(minS, r.StartTS)
				}
				require.Equal(t, lb, st.LogicalBytes)
				require.Equal(t, minC, st.MinCommitTS)
				require.Equal(t, maxC, st.MaxCommitTS)
				require.Equal(t, minS, st.MinStartTS)
			}
			df := st.DataFile("log/x.parquet")
			require.Equal(t, st.SHA256[:], df.Sha256)
			require.Equal(t, st.Rows, df.Rows)

			rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
			require.NoError(t, err)
			require.Equal(t, int64(len(rows)), rd.NumRows())
			requireRowsEqual(t, rows, readAll(t, rd.Iter(nil, nil)))
			t.Logf("%d rows, %d row groups, %d bytes", len(rows), rd.NumRowGroups(), len(data))

			// Ranges against brute force.
			for i := 0; i < 30 && len(rows) > 0; i++ {
				var start, end []byte
				if rng.Intn(4) > 0 {
					start = rows[rng.Intn(len(rows))].Key
				}
				if rng.Intn(4) > 0 {
					end = rows[rng.Intn(len(rows))].Key
					if rng.Intn(2) == 0 {
						end = append(bytes.Clone(end), 0)
					}
				}
				var want []*Row
				for _, r := range rows {
					if (start == nil || bytes.Compare(r.Key, start) >= 0) && (end == nil || bytes.Compare(r.Key, end) < 0) {
						want = append(want, r)
					}
				}
				requireRowsEqual(t, want, readAll(t, rd.Iter(start, end)))
			}
		})
	}
}

func TestWriteRefusesDisorder(t *testing.T) {
	r := func(k string, ts uint64) *Row {
		return &Row{Key: []byte(k), CommitTS: ts, StartTS: ts - 1, Op: OpPut, Value: []byte("v")}
	}
	for _, tc := range []struct {
		name string
		rows []*Row
		ok   bool
	}{
		{"sorted", []*Row{r("a", 9), r("a", 5), r("b", 9)}, true},
		{"duplicate", []*Row{r("a", 9), r("a", 9)}, true},
		{"key-back", []*Row{r("b", 9), r("a", 9)}, false},
		{"ts-ascending", []*Row{r("a", 5), r("a", 9)}, false},
		{"delete-with-value", []*Row{{Key: []byte("a"), CommitTS: 2, Op: OpDelete, Value: []byte("x")}}, false},
		{"bad-op", []*Row{{Key: []byte("a"), CommitTS: 2, Op: 7}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWriter(&bytes.Buffer{}, WriterOptions{})
			require.NoError(t, err)
			var werr error
			for _, row := range tc.rows {
				if werr = w.Write(row); werr != nil {
					break
				}
			}
			if tc.ok {
				require.NoError(t, werr)
			} else {
				require.Error(t, werr)
			}
			_, _ = w.Close()
		})
	}
}

var _ = fmt.Sprint

func TestZstdCodecInstalled(t *testing.T) {
	c, err := compress.GetCodec(compress.Codecs.Zstd)
	require.NoError(t, err)
	require.IsType(t, pooledZstd{}, c)
	src := bytes.Repeat([]byte("pitr "), 1000)
	enc := c.EncodeLevel(nil, src, compress.DefaultCompressionLevel)
	require.Less(t, len(enc), len(src))
	require.Equal(t, src, c.Decode(make([]byte, len(src)), enc))
}
