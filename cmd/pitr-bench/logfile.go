package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
)

// The logfile section measures the data file codec on realistic rows
// (TiDB-like record keys of 20-40 bytes, values of 100-500 bytes, half
// text-like, half random), in logical MB/s (key+value bytes), beside the
// physical limits measured on the same bytes in the same run:
//
//   - sha256: hashing the logical bytes once; the writer hashes everything
//     it writes and restore verifies every file's sha256 before decoding,
//     so this bounds both directions;
//   - memcpy: copying them once;
//   - zstd compress / decompress: the same bytes in 1 MiB blocks at the
//     writer's level, the cost of compression alone.
//
// Each figure is the best of logfileRounds runs. PITR_BENCH_LOGFILE_MIB sets
// the logical size (default 256).
func init() {
	register(Section{Name: "logfile", Run: runLogfileBench})
}

const logfileRounds = 3

func runLogfileBench(ctx context.Context, env *Env) ([]Row, error) {
	size, err := sizeMiB("PITR_BENCH_LOGFILE_MIB", 256)
	if err != nil {
		return nil, err
	}
	rows, arena := benchRows(size)
	logical := int64(len(arena))
	env.Logf("%d rows, %d MiB logical", len(rows), logical>>20)

	best := func(f func() error) (time.Duration, error) {
		var b time.Duration
		for i := 0; i < logfileRounds; i++ {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			start := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			if d := time.Since(start); b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	mbps := func(d time.Duration) float64 { return float64(logical) / 1e6 / d.Seconds() }

	dst := make([]byte, len(arena))
	memcpy, _ := best(func() error { copy(dst, arena); return nil })
	dst = nil
	hash, _ := best(func() error { sha256.Sum256(arena); return nil })
	// zstd at the writer's level over the same bytes in 1 MiB blocks (the
	// page size): the cost of compressing alone, no columns, no Parquet.
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	zdec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer zdec.Close()
	var blocks [][]byte
	zc, _ := best(func() error {
		blocks = blocks[:0]
		for off := 0; off < len(arena); off += 1 << 20 {
			blocks = append(blocks, zenc.EncodeAll(arena[off:min(off+1<<20, len(arena))], nil))
		}
		return nil
	})
	zbuf := make([]byte, 0, 1<<20)
	zd, err := best(func() error {
		for _, b := range blocks {
			if zbuf, err = zdec.DecodeAll(b, zbuf[:0]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("zstd baseline: %w", err)
	}
	blocks = nil

	var file bytes.Buffer
	var st logfile.Stats
	enc, err := best(func() error {
		file.Reset()
		w, err := logfile.NewWriter(&file, logfile.WriterOptions{})
		if err != nil {
			return err
		}
		for i := range rows {
			if err := w.Write(&rows[i]); err != nil {
				return err
			}
		}
		st, err = w.Close()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	data := file.Bytes()
	var groups int
	dec, err := best(func() error {
		rd, err := logfile.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return err
		}
		groups = rd.NumRowGroups()
		it := rd.Iter(nil, nil)
		var n int64
		var sum int64
		for it.Next() {
			r := it.Row()
			sum += r.LogicalSize()
			n++
		}
		if err := it.Err(); err != nil {
			return err
		}
		if n != int64(len(rows)) || sum != logical {
			return fmt.Errorf("decoded %d rows, %d bytes; want %d, %d", n, sum, len(rows), logical)
		}
		return it.Close()
	})
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	env.Logf("file %d MiB in %d row groups (%.1f%% of logical)", st.Size>>20, groups, 100*float64(st.Size)/float64(logical))

	return []Row{
		{Name: "memcpy", Value: mbps(memcpy), Unit: "MB/s"},
		{Name: "sha256", Value: mbps(hash), Unit: "MB/s"},
		{Name: "zstd compress", Value: mbps(zc), Unit: "MB/s"},
		{Name: "zstd decompress", Value: mbps(zd), Unit: "MB/s"},
		{Name: "encode (logical)", Value: mbps(enc), Unit: "MB/s", Baseline: "sha256", Ratio: mbps(enc) / mbps(hash)},
		{Name: "encode vs zstd", Value: mbps(enc), Unit: "MB/s", Baseline: "zstd compress", Ratio: mbps(enc) / mbps(zc)},
		{Name: "decode (logical)", Value: mbps(dec), Unit: "MB/s", Baseline: "sha256", Ratio: mbps(dec) / mbps(hash)},
		{Name: "decode vs zstd", Value: mbps(dec), Unit: "MB/s", Baseline: "zstd decompress", Ratio: mbps(dec) / mbps(zd)},
		{Name: "file size", Value: 100 * float64(st.Size) / float64(logical), Unit: "% logical"},
	}, nil
}

// benchRows builds sorted rows whose keys and values live in one arena of
// about size bytes (the logical bytes).
func benchRows(size int64) ([]logfile.Row, []byte) {
	rng := rand.New(rand.NewSource(1))
	words := []string{"alice", "bob", "transfer", "balance", "2026-11-22", "pending", "done", "EUR", "USD", "account", "note:", " ", "0", "1"}
	arena := make([]byte, 0, size+1024)
	var rows []logfile.Row
	ts := keyspace.FromTime(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC))
	table, handle := int64(100), int64(0)
	for int64(len(arena)) < size {
		// Key: t<table>_r<handle> in TiDB's memcomparable layout, padded
		// with an index-like suffix to 20-40 bytes.
		if rng.Intn(10000) == 0 {
			table++
		}
		handle += 1 + int64(rng.Intn(3))
		off := len(arena)
		arena = append(arena, 't')
		arena = binary.BigEndian.AppendUint64(arena, uint64(table)^1<<63)
		arena = append(arena, '_', 'r')
		arena = binary.BigEndian.AppendUint64(arena, uint64(handle)^1<<63)
		for pad := rng.Intn(21); pad > 0; pad-- {
			arena = append(arena, byte('a'+rng.Intn(26)))
		}
		kEnd := len(arena)
		vLen := 100 + rng.Intn(401)
		for len(arena)-kEnd < vLen/2 {
			arena = append(arena, words[rng.Intn(len(words))]...)
		}
		for len(arena)-kEnd < vLen {
			arena = append(arena, byte(rng.Intn(256)))
		}
		arena = arena[:kEnd+vLen]
		commit := ts + uint64(rng.Int63n(1<<30))
		rows = append(rows, logfile.Row{CommitTS: commit, StartTS: commit - uint64(1+rng.Intn(1<<20)), Op: logfile.OpPut, Key: arena[off:kEnd:kEnd], Value: arena[kEnd : kEnd+vLen : kEnd+vLen]})
	}
	// The arena never reallocates (capacity reserved up front), so the
	// row slices stay valid.
	return rows, arena
}
