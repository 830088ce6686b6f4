package logfile

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"
)

// decodeAll opens data and reads every row; it returns the first error.
func decodeAll(data []byte) (n int, err error) {
	rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return 0, err
	}
	it := rd.Iter(nil, nil)
	defer it.Close()
	for it.Next() {
		n++
	}
	return n, it.Err()
}

func corruptFixture(t testing.TB) []byte {
	rows := randRows(rand.New(rand.NewSource(7)), 2000, 0)
	data, _ := writeFile(t, rows, WriterOptions{RowGroupBytes: 32 << 10})
	return data
}

func TestCorrupt(t *testing.T) {
	data := corruptFixture(t)
	n, err := decodeAll(data)
	require.NoError(t, err)
	require.Equal(t, 2000, n)

	t.Run("truncated", func(t *testing.T) {
		for _, l := range []int{0, 1, 4, 11, 12, 100, len(data) / 2, len(data) - 9, len(data) - 8, len(data) - 1} {
			_, err := decodeAll(data[:l])
			require.ErrorIs(t, err, ErrCorrupt, "truncated to %d", l)
		}
	})
	t.Run("bit-flips", func(t *testing.T) {
		// Every byte of a small file, and a sample of a larger one: the
		// row-group and footer CRCs cover the whole file.
		small, _ := writeFile(t, randRows(rand.New(rand.NewSource(1)), 20, 0), WriterOptions{RowGroupBytes: 512})
		check := func(data []byte, pos int, mask byte) {
			c := bytes.Clone(data)
			c[pos] ^= mask
			_, err := decodeAll(c)
			require.ErrorIs(t, err, ErrCorrupt, "byte %d of %d ^ %#x", pos, len(c), mask)
		}
		for pos := range small {
			check(small, pos, 0x01)
			check(small, pos, 0x80)
		}
		rng := rand.New(rand.NewSource(3))
		for i := 0; i < 300; i++ {
			check(data, rng.Intn(len(data)), byte(1+rng.Intn(255)))
		}
	})
	t.Run("garbage", func(t *testing.T) {
		rng := rand.New(rand.NewSource(5))
		for _, l := range []int{0, 8, 12, 100, 70000} {
			g := make([]byte, l)
			rng.Read(g)
			_, err := decodeAll(g)
			require.ErrorIs(t, err, ErrCorrupt)
			if l >= 8 { // with both magics
				copy(g, "PAR1")
				copy(g[l-4:], "PAR1")
				_, err := decodeAll(g)
				require.ErrorIs(t, err, ErrCorrupt)
			}
		}
	})
}

// failingReaderAt fails every read with a non-corruption error.
type failingReaderAt struct{ err error }

func (f failingReaderAt) ReadAt([]byte, int64) (int, error) { return 0, f.err }

func TestReadErrorIsNotCorruption(t *testing.T) {
	boom := errors.New("network down")
	_, err := NewReader(failingReaderAt{boom}, 1000)
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrCorrupt)

	data := corruptFixture(t)
	// The footer reads fine, the row group read fails.
	fr := &flakyReaderAt{r: bytes.NewReader(data), failFrom: int64(len(data)) - footerReadAhead, err: boom}
	rd, err := NewReader(fr, int64(len(data)))
	require.NoError(t, err)
	fr.armed = true
	it := rd.Iter(nil, nil)
	for it.Next() {
	}
	require.ErrorIs(t, it.Err(), boom)
	require.NotErrorIs(t, it.Err(), ErrCorrupt)
}

type flakyReaderAt struct {
	r        io.ReaderAt
	failFrom int64
	armed    bool
	err      error
}

func (f *flakyReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if f.armed {
		return 0, f.err
	}
	return f.r.ReadAt(p, off)
}

func FuzzReader(f *testing.F) {
	f.Add(corruptFixture(f))
	small, _ := writeFile(f, randRows(rand.New(rand.NewSource(1)), 20, 0), WriterOptions{RowGroupBytes: 512})
	f.Add(small)
	empty, _ := writeFile(f, nil, WriterOptions{})
	f.Add(empty)
	f.Add([]byte("PAR1PAR1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrFormat) {
				t.Fatalf("open: error is neither ErrCorrupt nor ErrFormat: %v", err)
			}
			return
		}
		for _, r := range [][2][]byte{{nil, nil}, {[]byte("a"), []byte("m")}} {
			it := rd.Iter(r[0], r[1])
			for it.Next() {
				_ = it.Row().Clone()
			}
			if err := it.Err(); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("iterate: error is not ErrCorrupt: %v", err)
			}
			_ = it.Close()
		}
	})
}
