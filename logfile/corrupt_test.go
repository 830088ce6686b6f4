package logfile

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"strconv"
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
			for _, mask := range []byte{0x01, 0x20, 0x80} {
				check(small, pos, mask)
			}
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

// FuzzReader opens and reads arbitrary bytes. Run it by hand:
//
//	go test ./logfile -run '^$' -fuzz 'FuzzReader$' -fuzztime 1m -fuzzminimizetime 1s
//
// (the default minimisation of the large inputs takes minutes per input).
// go test runs the seeds.
func FuzzReader(f *testing.F) {
	// Small seeds: the fuzzer mutates whole inputs, and big ones crawl.
	mid, _ := writeFile(f, randRows(rand.New(rand.NewSource(2)), 200, 0), WriterOptions{RowGroupBytes: 4 << 10})
	f.Add(mid)
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

// restamp recomputes the row group and footer CRCs of data after its row
// groups were modified in place, as a buggy writer would have produced it.
func restamp(t testing.TB, data []byte) {
	metaLen := int(le32(data[len(data)-8:]))
	meta := data[len(data)-8-metaLen : len(data)-8]
	i := bytes.LastIndex(meta, []byte(kvRowGroups))
	require.Positive(t, i)
	// value: varint length then "off:len:crc,..."
	v := i + len(kvRowGroups) + 1
	n, w := 0, 0
	for shift := 0; ; shift += 7 {
		b := meta[v+w]
		n |= int(b&0x7f) << shift
		w++
		if b < 0x80 {
			break
		}
	}
	entries := meta[v+w : v+w+n]
	for _, e := range bytes.Split(entries, []byte(",")) {
		p := bytes.Split(e, []byte(":"))
		off, _ := strconv.Atoi(string(p[0]))
		l, _ := strconv.Atoi(string(p[1]))
		copy(p[2], fmt.Sprintf("%08x", crc32.Checksum(data[off:off+l], castagnoli)))
	}
	at, err := footerCRCValue(meta)
	require.NoError(t, err)
	copy(meta[at:], crcPlaceholder)
	require.NoError(t, stampFooter(data[len(data)-8-metaLen:]))
}

// TestCorruptBehindValidChecksums feeds the decoder damaged row groups
// whose checksums match (what a buggy writer would produce): errors are
// ErrCorrupt and nothing panics.
func TestCorruptBehindValidChecksums(t *testing.T) {
	data := corruptFixture(t)
	restamp(t, data)
	_, err := decodeAll(data)
	require.NoError(t, err, "restamping an intact file changes nothing")

	rd, err := NewReader(bytes.NewReader(data), int64(len(data)))
	require.NoError(t, err)
	end := rd.groups[len(rd.groups)-1].off + rd.groups[len(rd.groups)-1].length
	rng := rand.New(rand.NewSource(9))
	var failed int
	for i := 0; i < 300; i++ {
		c := bytes.Clone(data)
		for j := 1 + rng.Intn(3); j > 0; j-- {
			c[4+rng.Int63n(end-4)] ^= byte(1 + rng.Intn(255))
		}
		restamp(t, c)
		if _, err := decodeAll(c); err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			failed++
		}
	}
	t.Logf("%d of 300 damaged files refused", failed)
}

// FuzzRowGroups (run like FuzzReader) damages the row groups of a valid file and fixes up the
// checksums, so the fuzzer reaches the page decoders behind them.
func FuzzRowGroups(f *testing.F) {
	base := corruptFixture(f)
	rd, err := NewReader(bytes.NewReader(base), int64(len(base)))
	require.NoError(f, err)
	last := rd.groups[len(rd.groups)-1]
	end := last.off + last.length
	f.Add(uint32(100), []byte{0xff})
	f.Add(uint32(5000), []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, pos uint32, mask []byte) {
		c := bytes.Clone(base)
		for i, m := range mask {
			c[4+(int64(pos)+int64(i))%(end-4)] ^= m
		}
		restamp(t, c)
		if _, err := decodeAll(c); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error is not ErrCorrupt: %v", err)
		}
	})
}
