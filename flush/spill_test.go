package flush

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
)

func readRun(path string) ([]logfile.Row, error) {
	it, err := openRun(path)
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var rows []logfile.Row
	for it.Next() {
		rows = append(rows, *it.Row())
	}
	return rows, it.Err()
}

func ptrs(rows []logfile.Row) []*logfile.Row {
	out := make([]*logfile.Row, len(rows))
	for i := range rows {
		out[i] = &rows[i]
	}
	return out
}

func TestRunRoundTrip(t *testing.T) {
	rows := []logfile.Row{
		{Key: []byte("a"), CommitTS: 9, StartTS: 8, Op: logfile.OpPut, Value: []byte("v")},
		{Key: []byte("a"), CommitTS: 7, StartTS: 6, Op: logfile.OpPut, Value: []byte{}},
		{Key: []byte("b"), CommitTS: 7, StartTS: 6, Op: logfile.OpPut, Value: nil},
		{Key: []byte("c"), CommitTS: 5, StartTS: 4, Op: logfile.OpDelete, HasOldValue: true, OldValue: []byte("old")},
		{Key: []byte("d"), CommitTS: 1<<63 - 1, StartTS: 3, Op: logfile.OpPut, Value: []byte("x"), HasOldValue: true, OldValue: []byte{}},
		{Key: []byte("e"), CommitTS: 2, StartTS: 1, Op: logfile.OpPut, Value: []byte("y"), HasOldValue: true},
		{Key: []byte{}, CommitTS: 2, StartTS: 1, Op: logfile.OpDelete},
	}
	path := filepath.Join(t.TempDir(), "r.spill")
	require.NoError(t, writeRun(path, ptrs(rows)))
	var recs int64
	for i := range rows {
		recs += recordSize(&rows[i])
	}
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, runSize(recs), fi.Size(), "runSize is exact")
	got, err := readRun(path)
	require.NoError(t, err)
	require.Equal(t, rows, got, "nil and empty slices survive")

	empty := filepath.Join(t.TempDir(), "e.spill")
	require.NoError(t, writeRun(empty, nil))
	got, err = readRun(empty)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestRunCorruption(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	rows := genRows(rng, 50, 1<<30, 40)
	dir := t.TempDir()
	path := filepath.Join(dir, "r.spill")
	require.NoError(t, writeRun(path, ptrs(rows)))
	good, err := os.ReadFile(path)
	require.NoError(t, err)

	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("PITRRUN9"), good[8:]...)},
		{"truncated in a record", good[:len(good)/2]},
		{"no trailer", good[:len(good)-runTrailerLen]},
		{"truncated trailer", good[:len(good)-3]},
		{"bytes after the trailer", append(append([]byte{}, good...), 0)},
	}
	for _, off := range []int{8, 20, 40, len(good) / 2, len(good) - 10, len(good) - 1} {
		b := append([]byte{}, good...)
		b[off] ^= 0x10
		tests = append(tests, struct {
			name string
			b    []byte
		}{name: "bit flip", b: b})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.spill")
			require.NoError(t, os.WriteFile(p, tc.b, 0o600))
			_, err := readRun(p)
			require.ErrorIs(t, err, ErrSpillCorrupt)
		})
	}
}

func FuzzRunIter(f *testing.F) {
	rng := rand.New(rand.NewPCG(33, 34))
	var seed bytes.Buffer
	if err := encodeRun(&seed, ptrs(genRows(rng, 5, 3, 8))); err != nil {
		f.Fatal(err)
	}
	f.Add(seed.Bytes())
	f.Add([]byte(runMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		it, err := newRunIter("fuzz", bytes.NewReader(b))
		if err != nil {
			require.ErrorIs(t, err, ErrSpillCorrupt)
			return
		}
		var rows []logfile.Row
		for it.Next() {
			rows = append(rows, *it.Row())
		}
		if err := it.Err(); err != nil {
			require.ErrorIs(t, err, ErrSpillCorrupt)
			return
		}
		// A run that decodes re-encodes to the same bytes.
		var again bytes.Buffer
		require.NoError(t, encodeRun(&again, ptrs(rows)))
		require.Equal(t, b, again.Bytes())
	})
}
