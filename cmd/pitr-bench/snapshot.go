package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tikv/client-go/v2/tikv"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// The snapshot section: PITR_BENCH_SNAPSHOT_MIB (default 256) MiB of keys
// and values (benchRows) ingested into a one-store playground split into
// 16 regions, then
//
//   - the limit of the backup: a client-go snapshot scan of every key at
//     the backup ts, discarded, with the agent's concurrency;
//   - a snapshot backup (snapshot.Run) of a task root (task.StartTask on
//     the source, so the agent also serves the running task, as after
//     `task start --with-snapshot`), every range scanned by a `pitr agent`
//     process beside the store, over the whole run (checksums and
//     backupmeta included), with the agent's peak RSS sampled meanwhile;
//   - a restore of the task root to its start ts (the snapshot is the base,
//     the log window is empty) into a fresh 3-store playground pre-split at
//     the source's boundaries, SSTs to every peer, beside the limit of
//     decoding the snapshot's files with all CPUs.
func init() {
	register(Section{Name: "snapshot", Run: runSnapshotBench})
}

const (
	snapshotBenchRegions = 16
	snapshotGoalMBps     = 100
	snapshotRSSLimitMiB  = 512
)

func runSnapshotBench(ctx context.Context, env *Env) ([]Row, error) {
	size, err := sizeMiB("PITR_BENCH_SNAPSHOT_MIB", 256)
	if err != nil {
		return nil, err
	}
	quietClientGo()
	bin, err := buildPitr(ctx, env)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(env.Tmp, "backup")
	url := "file://" + dir
	st, err := storage.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	defer st.Close()

	src, err := snapshotSource(ctx, env, bin, st, url, size)
	if err != nil {
		return nil, err
	}
	runtime.GC()

	// Limit of the restore: decode the snapshot's files, all CPUs.
	info, err := snapshot.Load(ctx, st, src.res.Root)
	if err != nil {
		return nil, err
	}
	files := info.Meta.GetFiles()
	var best time.Duration
	for round := 0; round < 2; round++ {
		d, n, err := decodeAll(filepath.Join(dir, filepath.FromSlash(src.res.Root)), files)
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		if n != src.logical {
			return nil, fmt.Errorf("decoded %d logical bytes, want %d", n, src.logical)
		}
		if best == 0 || d < best {
			best = d
		}
	}
	decodeMBps := float64(src.logical) / 1e6 / best.Seconds()
	env.Logf("decode only: %d files in %s", len(files), best.Round(time.Millisecond))

	restoreMBps, err := benchRestore(ctx, env, st, src.res.BackupTS, src.bounds, src.logical, false)
	if err != nil {
		return nil, err
	}
	backupMBps := float64(src.res.LogicalBytes) / 1e6 / src.res.Duration.Seconds()
	return []Row{
		{Name: fmt.Sprintf("discarding scan, %d streams (limit)", agent.DefaultBackupConcurrency), Value: src.scanMBps, Unit: "MB/s"},
		{Name: "snapshot backup, 1 agent", Value: backupMBps, Unit: "MB/s", Baseline: "discarding scan", Ratio: backupMBps / src.scanMBps},
		{Name: "snapshot backup, 1 agent, vs goal", Value: backupMBps, Unit: "MB/s", Baseline: "100 MB/s goal", Ratio: backupMBps / snapshotGoalMBps},
		{Name: "agent peak RSS during a snapshot", Value: src.peakMiB, Unit: "MiB", Baseline: "512 MiB limit", Ratio: src.peakMiB / snapshotRSSLimitMiB},
		{Name: fmt.Sprintf("decode only, %d CPUs (limit)", runtime.GOMAXPROCS(0)), Value: decodeMBps, Unit: "MB/s"},
		{Name: "snapshot restore, every peer", Value: restoreMBps, Unit: "MB/s", Baseline: "decode only", Ratio: restoreMBps / decodeMBps},
		{Name: "snapshot restore, vs half of decode only", Value: restoreMBps, Unit: "MB/s", Baseline: "0.5× decode only", Ratio: restoreMBps / (decodeMBps / 2)},
	}, nil
}

// snapshotRun is what the source side measured.
type snapshotRun struct {
	res      *snapshot.Result
	bounds   [][]byte // the source's region boundaries
	logical  int64    // key+value bytes loaded
	scanMBps float64
	peakMiB  float64
}

// snapshotSource loads the source playground, measures the discarding
// scan, and takes the snapshot through an agent into the task root st
// (at url). The agent and the playground are gone when it returns.
func snapshotSource(ctx context.Context, env *Env, bin string, st storage.Storage, url string, size int64) (*snapshotRun, error) {
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	out := &snapshotRun{}
	start := time.Now()
	bounds, logical, nRows, err := loadBenchRows(ctx, p, size, snapshotBenchRegions)
	if err != nil {
		return nil, err
	}
	out.bounds, out.logical = bounds, logical
	env.Logf("source: %d rows, %d MiB of keys+values, %d regions, loaded in %s", nRows, out.logical>>20, snapshotBenchRegions, time.Since(start).Round(time.Millisecond))

	// client-go first: it sets the PD client's globals (see connector.KV).
	cfg := connector.Config{PDAddrs: []string{p.PDAddr()}, Component: "pitr-bench"}
	kv, err := connector.KV(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer kv.Close()
	cl, err := connector.Connect(ctx, cfg, task.AgentPrefix)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	rec, err := task.StartTask(ctx, cl.Etcd, cl.PD, task.StartOptions{Name: "bench", StorageURL: url})
	if err != nil {
		return nil, fmt.Errorf("start task: %w", err)
	}
	ts := rec.GetInfo().GetStartTs()

	// Limit: the scan alone, discarded, as many streams as the agent scans
	// ranges at once; the better of two rounds (the playground serving the
	// scan shares this machine's CPUs, and runs vary).
	var best time.Duration
	for round := 0; round < 2; round++ {
		start = time.Now()
		scanned, err := discardScan(ctx, kv.KVStore, ts, out.bounds, agent.DefaultBackupConcurrency)
		if err != nil {
			return nil, fmt.Errorf("discarding scan: %w", err)
		}
		if scanned != out.logical {
			return nil, fmt.Errorf("discarding scan read %d bytes of keys and values, loaded %d", scanned, out.logical)
		}
		if el := time.Since(start); best == 0 || el < best {
			best = el
		}
	}
	out.scanMBps = float64(out.logical) / 1e6 / best.Seconds()
	env.Logf("discarding scan: %s", best.Round(time.Millisecond))

	a, err := startAgent(env, bin, p, "snapshot-agent")
	if err != nil {
		return nil, err
	}
	defer a.stop()
	if _, err := a.registered(ctx, cl.Etcd, time.Now().Add(time.Minute)); err != nil {
		return nil, err
	}
	agents, err := snapshot.NewEtcdAgents(ctx, cl.Etcd, connector.TLS{})
	if err != nil {
		return nil, err
	}
	defer agents.Close()
	if agents.Stores() != 1 {
		return nil, fmt.Errorf("%d stores have an agent, want 1", agents.Stores())
	}
	stopSampling, sampled := sampleRSS(a.pid())
	out.res, err = snapshot.Run(ctx, snapshot.Options{
		Storage: st, StorageURL: url, PD: cl.PD, KV: kv.KVStore, Agents: agents, BackupTS: ts,
		Logger: quietLogger(),
	})
	stopSampling()
	if err != nil {
		return nil, a.fail(fmt.Errorf("snapshot: %w", err))
	}
	res := out.res
	env.Logf("snapshot: %d ranges (%d by the agent), %d files, %d MiB stored, %d MiB logical, in %s",
		res.Ranges, res.ByAgents, res.Files, res.Bytes>>20, res.LogicalBytes>>20, res.Duration.Round(time.Millisecond))
	if res.ByAgents != res.Ranges {
		return nil, fmt.Errorf("the agent scanned %d of %d ranges: the figure would not be per agent", res.ByAgents, res.Ranges)
	}
	if int64(res.LogicalBytes) != out.logical {
		return nil, fmt.Errorf("the snapshot holds %d bytes of keys and values, loaded %d", res.LogicalBytes, out.logical)
	}
	rss, peak, err := sampled()
	if err != nil {
		return nil, a.fail(err)
	}
	out.peakMiB = peak
	env.Logf("agent: highest sampled RSS %.0f MiB, peak (VmHWM) %.0f MiB", rss, peak)
	return out, nil
}

// discardScan reads every key at ts through client-go's snapshot scan
// (the agent's batch size, no cache fill), split at bounds into streams
// parts read at once, and returns the key and value bytes seen.
func discardScan(ctx context.Context, kv *tikv.KVStore, ts uint64, bounds [][]byte, streams int) (int64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, streams)
	regions := len(bounds) + 1 // stream i reads regions [regions*i/streams, regions*(i+1)/streams)
	for i := range streams {
		start, end := []byte{}, []byte(nil) // client-go: empty start is the first key, nil end the last
		if i > 0 {
			start = bounds[regions*i/streams-1]
		}
		if i < streams-1 {
			end = bounds[regions*(i+1)/streams-1]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			snap := kv.GetSnapshot(ts)
			snap.SetScanBatchSize(snapshot.DefaultBatchSize)
			snap.SetNotFillCache(true)
			it, err := snap.Iter(start, end)
			if err != nil {
				errs[i] = err
				return
			}
			defer it.Close()
			var n int64
			for it.Valid() && ctx.Err() == nil {
				n += int64(len(it.Key()) + len(it.Value()))
				if err := it.Next(); err != nil {
					errs[i] = err
					return
				}
			}
			total.Add(n)
			errs[i] = ctx.Err()
		}()
	}
	wg.Wait()
	return total.Load(), errors.Join(errs...)
}

// sampleRSS samples a process's VmRSS every 50ms until stop; sampled
// returns the highest RSS seen and the process's peak (VmHWM), in MiB.
func sampleRSS(pid int) (stop func(), sampled func() (rss, peak float64, err error)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var high float64
	var firstErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			rss, _, err := procMemMiB(pid)
			if err != nil && firstErr == nil {
				firstErr = err
			}
			high = max(high, rss)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	sampled = func() (float64, float64, error) {
		stop()
		if firstErr != nil {
			return 0, 0, firstErr
		}
		_, peak, err := procMemMiB(pid)
		return high, peak, err
	}
	return stop, sampled
}

// quietLogger logs warnings and errors to stderr.
func quietLogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})
}

// loadBenchRows ingests size bytes of benchRows into a playground at one
// commit ts and splits it into regions regions; it returns the split
// keys, the key and value bytes loaded and the rows.
func loadBenchRows(ctx context.Context, p *playground.Playground, size int64, regions int) (bounds [][]byte, logical int64, n int, err error) {
	ts, err := p.PD.TS(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	rows, arena := benchRows(size)
	batch := make([]mvcc.IngestEntry, 0, 4096)
	for i := range rows {
		batch = append(batch, mvcc.IngestEntry{Key: rows[i].Key, StartTS: ts, CommitTS: ts, Value: rows[i].Value})
		if len(batch) == cap(batch) || i == len(rows)-1 {
			if err := p.Engine.Ingest(batch); err != nil {
				return nil, 0, 0, err
			}
			batch = batch[:0]
		}
	}
	for i := 1; i < regions; i++ {
		k := bytes.Clone(rows[len(rows)*i/regions].Key)
		if _, err := p.Cluster.Split(k); err != nil {
			return nil, 0, 0, fmt.Errorf("split source: %w", err)
		}
		bounds = append(bounds, k)
	}
	return bounds, int64(len(arena)), len(rows), nil
}
