package logfile

import (
	"bytes"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

type countingReaderAt struct {
	r     io.ReaderAt
	reads atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.r.ReadAt(p, off)
}

// TestIterPrunes checks that a narrow range reads only the row groups that
// may hold it, with one read each, and that concurrent iterators on one
// Reader work.
func TestIterPrunes(t *testing.T) {
	var rows []*Row
	for i := 0; i < 10000; i++ {
		rows = append(rows, &Row{Key: []byte(fmt.Sprintf("key-%06d", i)), CommitTS: 10, StartTS: 9, Op: OpPut, Value: bytes.Repeat([]byte{'v'}, 100)})
	}
	data, _ := writeFile(t, rows, WriterOptions{RowGroupBytes: 64 << 10})
	cr := &countingReaderAt{r: bytes.NewReader(data)}
	rd, err := NewReader(cr, int64(len(data)))
	require.NoError(t, err)
	require.Greater(t, rd.NumRowGroups(), 10)
	require.Equal(t, int64(2), cr.reads.Load(), "open: header magic + footer")

	for _, tc := range []struct {
		name       string
		start, end string
		rows       int
		maxReads   int64
	}{
		{"inside-one-group", "key-005000", "key-005010", 10, 2},
		{"before-all", "a", "b", 0, 0},
		{"after-all", "z", "", 0, 0},
		{"point", "key-000000", "key-000000\x00", 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr.reads.Store(0)
			var end []byte
			if tc.end != "" {
				end = []byte(tc.end)
			}
			got := readAll(t, rd.Iter([]byte(tc.start), end))
			require.Len(t, got, tc.rows)
			require.LessOrEqual(t, cr.reads.Load(), tc.maxReads)
		})
	}

	// Concurrent iterators over one Reader.
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func() {
			it := rd.Iter(nil, nil)
			n := 0
			for it.Next() {
				if want := fmt.Sprintf("key-%06d", n); string(it.Row().Key) != want {
					errs <- fmt.Errorf("row %d: key %q", n, it.Row().Key)
					return
				}
				n++
			}
			if n != len(rows) {
				errs <- fmt.Errorf("%d rows", n)
				return
			}
			errs <- it.Err()
		}()
	}
	for g := 0; g < 8; g++ {
		require.NoError(t, <-errs)
	}
}

// TestHugeKeys: keys above the statistics limit leave their row group
// without key statistics; it is then never pruned, and ranges stay correct.
func TestHugeKeys(t *testing.T) {
	huge := bytes.Repeat([]byte{'h'}, maxStatsSize+1)
	rows := []*Row{
		{Key: []byte("a"), CommitTS: 2, StartTS: 1, Op: OpPut, Value: []byte("1")},
		{Key: huge, CommitTS: 2, StartTS: 1, Op: OpPut, Value: []byte("2")},
		{Key: []byte("i"), CommitTS: 2, StartTS: 1, Op: OpPut, Value: []byte("3")},
		{Key: []byte("z"), CommitTS: 2, StartTS: 1, Op: OpDelete},
	}
	data, st := writeFile(t, rows, WriterOptions{RowGroupBytes: 1})
	require.Equal(t, []byte("z"), st.MaxKey)
	rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
	require.NoError(t, err)
	require.Equal(t, 4, rd.NumRowGroups())
	require.False(t, rd.groups[1].hasKeyStats)
	require.True(t, rd.groups[2].hasKeyStats)
	requireRowsEqual(t, rows[1:3], readAll(t, rd.Iter([]byte("b"), []byte("j"))))
	requireRowsEqual(t, rows[1:2], readAll(t, rd.Iter(huge, append(bytes.Clone(huge), 0))))
}

// TestBigFooter: long keys with statistics make a footer larger than the
// first read from the end of the file.
func TestBigFooter(t *testing.T) {
	var rows []*Row
	for i := 0; i < 6; i++ {
		k := append(bytes.Repeat([]byte{byte('a' + i)}, 30<<10), byte(i))
		rows = append(rows, &Row{Key: k, CommitTS: 2, StartTS: 1, Op: OpPut, Value: []byte("v")})
	}
	data, _ := writeFile(t, rows, WriterOptions{RowGroupBytes: 1})
	rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
	require.NoError(t, err)
	require.Greater(t, int(rd.md.Size()), footerReadAhead)
	require.True(t, rd.groups[3].hasKeyStats)
	requireRowsEqual(t, rows[2:4], readAll(t, rd.Iter(rows[2].Key, rows[4].Key)))
}
