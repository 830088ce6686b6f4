package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/storage"
)

// The flush section: rows → Flusher → Parquet files in file:// storage,
// in MB/s of key+value bytes, beside the physical limit measured in the
// same run (the same bytes written raw to one file and fsynced).
func init() {
	register(Section{Name: "flush", Run: runFlushBench})
}

const (
	flushBenchBytes = 512 << 20 // key+value bytes per measurement
	flushBenchValue = 1000      // value length
	flushBenchBatch = 256       // rows per Add
)

// flushRows produces rows with random (unsorted) 24-byte keys and values cut
// from a low-entropy corpus (zstd compresses them about 2×, like typical
// row data). Value slices are shared and read-only.
type flushRows struct {
	rng    *rand.Rand
	corpus []byte
	ts     uint64
}

func newFlushRows(seed uint64) *flushRows {
	rng := rand.New(rand.NewPCG(seed, 99))
	corpus := make([]byte, 4<<20)
	for i := range corpus {
		corpus[i] = 'a' + byte(rng.IntN(16))
	}
	return &flushRows{rng: rng, corpus: corpus, ts: 1 << 40}
}

func (g *flushRows) batch(n int) ([]logfile.Row, int64) {
	rows := make([]logfile.Row, n)
	keys := make([]byte, 24*n)
	var logical int64
	for i := range rows {
		k := keys[i*24 : i*24+24 : i*24+24]
		copy(k, "t\x80\x00\x00\x00\x00\x00\x2a_r")
		binary.BigEndian.PutUint64(k[10:], g.rng.Uint64())
		binary.BigEndian.PutUint32(k[18:], g.rng.Uint32())
		off := g.rng.IntN(len(g.corpus) - flushBenchValue)
		g.ts++
		rows[i] = logfile.Row{Key: k, CommitTS: g.ts, StartTS: g.ts - 7, Op: logfile.OpPut, Value: g.corpus[off : off+flushBenchValue]}
		logical += int64(len(k) + flushBenchValue)
	}
	return rows, logical
}

func runFlushBench(ctx context.Context, env *Env) ([]Row, error) {
	mb := func(b int64, d time.Duration) float64 { return float64(b) / 1e6 / d.Seconds() }

	raw, err := flushRawBaseline(filepath.Join(env.Tmp, "raw"), flushBenchBytes)
	if err != nil {
		return nil, err
	}
	rawMBs := mb(flushBenchBytes, raw)
	env.Logf("raw write+fsync: %d MB in %s", flushBenchBytes/1000000, raw.Round(time.Millisecond))

	steady, steadyCPU, err := flushBenchSteady(ctx, env)
	if err != nil {
		return nil, err
	}
	spill, spillBytes, fl, flCPU, err := flushBenchSpill(ctx, env)
	if err != nil {
		return nil, err
	}
	const base = "raw write+fsync"
	// Per CPU second: the machine may be shared; CPU time is what the
	// flush path costs whatever else runs.
	return []Row{
		{Name: base, Value: rawMBs, Unit: "MB/s"},
		{Name: "add+flush, cut at 128 MiB (e2e)", Value: steady, Unit: "MB/s", Baseline: base, Ratio: steady / rawMBs},
		{Name: "add+flush, per CPU second", Value: steadyCPU, Unit: "MB/cpu-s"},
		{Name: "add with spill (sort+write runs)", Value: spill, Unit: "MB/s", Baseline: base, Ratio: spill / rawMBs},
		{Name: "flush of 512 MB, 15/16 spilled", Value: fl, Unit: "MB/s", Baseline: base, Ratio: fl / rawMBs},
		{Name: "flush of 512 MB, per CPU second", Value: flCPU, Unit: "MB/cpu-s"},
		{Name: "spilled", Value: float64(spillBytes) / 1e6, Unit: "MB"},
	}, nil
}

// flushRawBaseline writes n bytes to a new file in 1 MiB writes and fsyncs.
func flushRawBaseline(path string, n int64) (time.Duration, error) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	fd, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	for left := n; left > 0; left -= int64(len(buf)) {
		if _, err := fd.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			fd.Close()
			return 0, err
		}
	}
	if err := fd.Sync(); err != nil {
		fd.Close()
		return 0, err
	}
	if err := fd.Close(); err != nil {
		return 0, err
	}
	d := time.Since(start)
	return d, os.Remove(path)
}

func newFlushBenchFlusher(ctx context.Context, env *Env, name string) (*flush.Flusher, storage.Storage, error) {
	st, err := storage.Open(ctx, "file://"+filepath.Join(env.Tmp, name, "store"))
	if err != nil {
		return nil, nil, err
	}
	f, err := flush.New(flush.Config{StoreID: 1, Task: "bench", Dir: filepath.Join(env.Tmp, name, "spill"), Storage: st})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// flushBenchSteady is the agent's steady state: Adds keep flowing while a
// goroutine flushes whenever FileTarget bytes are buffered.
func flushBenchSteady(ctx context.Context, env *Env) (mbs, perCPU float64, err error) {
	f, st, err := newFlushBenchFlusher(ctx, env, "steady")
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	defer f.Close()
	g := newFlushRows(1)
	kick := make(chan struct{}, 1)
	errc := make(chan error, 1)
	stop := make(chan struct{})
	var ts uint64 = 1 << 50
	go func() {
		for {
			select {
			case <-kick:
			case <-stop:
				errc <- nil
				return
			}
			ts++
			if _, err := f.Flush(ctx, ts, nil); err != nil {
				errc <- err
				return
			}
		}
	}()
	start, cpu0 := time.Now(), cpuTime()
	var total int64
	for total < flushBenchBytes {
		rows, n := g.batch(flushBenchBatch)
		if err := f.Add(ctx, rows); err != nil {
			close(stop)
			return 0, 0, err
		}
		total += n
		if f.Buffered() >= flush.DefaultFileTarget {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
	close(stop)
	if err := <-errc; err != nil {
		return 0, 0, err
	}
	ts++
	if _, err := f.Flush(ctx, ts, nil); err != nil {
		return 0, 0, err
	}
	d, cpu := time.Since(start), cpuTime()-cpu0
	env.Logf("steady: %d MB in %s (%s CPU)", total/1000000, d.Round(time.Millisecond), cpu.Round(time.Millisecond))
	return float64(total) / 1e6 / d.Seconds(), float64(total) / 1e6 / cpu.Seconds(), nil
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// flushBenchSpill adds 512 MB without flushing (most of it spills under the
// default 256 MiB memory budget), then flushes it all at once.
func flushBenchSpill(ctx context.Context, env *Env) (add float64, spilled int64, fl, flCPU float64, err error) {
	f, st, err := newFlushBenchFlusher(ctx, env, "spill")
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer st.Close()
	defer f.Close()
	g := newFlushRows(2)
	start := time.Now()
	var total int64
	for total < flushBenchBytes {
		rows, n := g.batch(flushBenchBatch)
		if err := f.Add(ctx, rows); err != nil {
			return 0, 0, 0, 0, err
		}
		total += n
	}
	addDur := time.Since(start)
	spilled = f.Stats().Spilled
	start, cpu0 := time.Now(), cpuTime()
	m, err := f.Flush(ctx, 1<<50, nil)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	flDur, flCPUDur := time.Since(start), cpuTime()-cpu0
	var fileBytes int64
	for _, df := range m.Files {
		fileBytes += df.Size
	}
	env.Logf("spill: add %d MB in %s (%d MB spilled); flush in %s (%s CPU): %d files, %d MB stored",
		total/1000000, addDur.Round(time.Millisecond), spilled/1000000, flDur.Round(time.Millisecond),
		flCPUDur.Round(time.Millisecond), len(m.Files), fileBytes/1000000)
	if spilled == 0 {
		return 0, 0, 0, 0, fmt.Errorf("nothing spilled")
	}
	mb := float64(total) / 1e6
	return mb / addDur.Seconds(), spilled, mb / flDur.Seconds(), mb / flCPUDur.Seconds(), nil
}
