package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/importer"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
)

// The restore section: a log backup of PITR_BENCH_RESTORE_MIB (default
// 256) MiB of keys and values, made by flush.Flusher into file:// (3 stores,
// 16 source regions, 4 flushes each), restored into a fresh 3-store
// playground pre-split at the same 16 boundaries (as BR splits and
// scatters before it restores), in MB/s of key+value bytes written; the
// whole run counts (metadata, sha256 of every file, empty check, writes).
// Beside it, the limit measured in the same run on the same files:
// decoding them (Parquet + zstd + CRC) with the same CPUs and nothing
// else. The target is 83 MB/s (300 GB/h, ten times TiDB's published
// 30 GB/h per TiKV log-restore rate).
func init() {
	register(Section{Name: "restore", Run: runRestoreBench})
}

const (
	restoreBenchRegions = 16
	restoreBenchFlushes = 4
	restoreTargetMBps   = 300e3 / 3600 // 300 GB/h
)

func runRestoreBench(ctx context.Context, env *Env) ([]Row, error) {
	size, err := sizeMiB("PITR_BENCH_RESTORE_MIB", 256)
	if err != nil {
		return nil, err
	}
	quietClientGo()
	rows, arena := benchRows(size)
	logical := int64(len(arena))
	url := "file://" + filepath.Join(env.Tmp, "backup")
	st, err := storage.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	start := time.Now()
	cp, bounds, err := writeBenchBackup(ctx, st, env.Tmp, rows, restoreBenchFlushes, 0)
	if err != nil {
		return nil, fmt.Errorf("make backup: %w", err)
	}
	rows, arena = nil, nil
	runtime.GC()
	var files []*pitrpb.DataFile
	var fileBytes int64
	if err := st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		b, err := st.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		m, err := logfile.DecodeMeta(b)
		if err != nil {
			return err
		}
		for _, f := range m.Files {
			files = append(files, f)
			fileBytes += f.Size
		}
		return nil
	}); err != nil {
		return nil, err
	}
	env.Logf("backup: %d MiB logical in %d files (%d MiB), made in %s", logical>>20, len(files), fileBytes>>20, time.Since(start).Round(time.Millisecond))

	// Limit: decode every file, all CPUs, nothing else.
	var best time.Duration
	for round := 0; round < 2; round++ {
		d, n, err := decodeAll(filepath.Join(env.Tmp, "backup"), files)
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		if n != logical {
			return nil, fmt.Errorf("decoded %d logical bytes, want %d", n, logical)
		}
		if best == 0 || d < best {
			best = d
		}
	}
	decodeMBps := float64(logical) / 1e6 / best.Seconds()

	leader, err := benchRestore(ctx, env, st, cp, bounds, logical, true)
	if err != nil {
		return nil, err
	}
	all, err := benchRestore(ctx, env, st, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	return []Row{
		{Name: fmt.Sprintf("decode only, %d CPUs (limit)", runtime.GOMAXPROCS(0)), Value: decodeMBps, Unit: "MB/s"},
		{Name: "restore, SST to the leader (playground)", Value: leader, Unit: "MB/s", Baseline: "decode only", Ratio: leader / decodeMBps},
		{Name: "restore, SST to every peer (TiKV)", Value: all, Unit: "MB/s", Baseline: "decode only", Ratio: all / decodeMBps},
		// The goal is for what real TiKV needs: every peer, ≥ 83 MB/s and
		// ≥ 0.5× decode only.
		{Name: "restore, every peer, vs target", Value: all, Unit: "MB/s", Baseline: "83 MB/s (300 GB/h)", Ratio: all / restoreTargetMBps},
		{Name: "restore, every peer, vs half of decode only", Value: all, Unit: "MB/s", Baseline: "0.5× decode only", Ratio: all / (decodeMBps / 2)},
	}, nil
}

// benchRestore restores the backup into a fresh playground pre-split at
// bounds, leaders spread over the stores, and returns MB/s of keys and
// values written over the whole run.
func benchRestore(ctx context.Context, env *Env, st storage.Storage, cp uint64, bounds [][]byte, logical int64, leaderOnly bool) (float64, error) {
	// The leader-only run needs a playground that accepts ingests whose SSTs
	// only the leader holds (restore refuses LeaderOnly on anything but a
	// playground; real TiKV followers would panic).
	p, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1,
		Import: importer.Limits{LeaderOnlyIngest: leaderOnly}})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	for i, k := range bounds {
		rs, err := p.Cluster.Split(k)
		if err != nil {
			return 0, fmt.Errorf("split target: %w", err)
		}
		_ = p.Cluster.TransferLeader(rs[len(rs)-1].ID, uint64(1+i%3))
	}
	runtime.GC()
	if path := os.Getenv("PITR_BENCH_RESTORE_PROFILE"); path != "" && !leaderOnly { // the run that matters: SSTs to every peer
		f, err := os.Create(path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 0, err
		}
		defer pprof.StopCPUProfile()
	}
	res, err := restore.Run(ctx, restore.Options{
		Source: st, PDAddrs: []string{p.PDAddr()}, RestoreTS: cp, LeaderOnly: leaderOnly,
		ProgressFile: filepath.Join(env.Tmp, fmt.Sprintf("progress-%v-%s.json", leaderOnly, filepath.Base(st.URL()))),
	})
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	if res.Bytes != logical {
		return 0, fmt.Errorf("restored %d bytes of keys and values, want %d", res.Bytes, logical)
	}
	env.Logf("leader only %v: %s", leaderOnly, res.Summary())
	return res.MBps(), nil
}

// writeBenchBackup writes rows (sorted, unique keys) as a task that started
// empty: 16 source regions with boundaries at row quantiles, 3 stores
// owning them round-robin, flushes cut by commit_ts, a keyframe every
// keyframeEvery metas of a store (0: flush's default). It returns the
// checkpoint and the region boundaries.
func writeBenchBackup(ctx context.Context, st storage.Storage, tmp string, rows []logfile.Row, flushes, keyframeEvery int) (uint64, [][]byte, error) {
	minTS, maxTS := rows[0].CommitTS, rows[0].CommitTS
	for i := range rows {
		minTS, maxTS = min(minTS, rows[i].CommitTS), max(maxTS, rows[i].CommitTS)
	}
	startTS := minTS - 1
	task := &pitrpb.TaskInfo{Name: "bench", StartTs: startTS, StartedEmpty: true}
	put := func(key string, b []byte, err error) error {
		if err != nil {
			return err
		}
		return st.Put(ctx, key, b)
	}
	lock, err := logfile.EncodeLock(&pitrpb.Lock{Task: "bench"})
	if err := put(logfile.LockPath, lock, err); err != nil {
		return 0, nil, err
	}
	tb, err := logfile.EncodeTaskInfo(task)
	if err := put(logfile.TaskPath, tb, err); err != nil {
		return 0, nil, err
	}
	var bounds [][]byte
	for i := 1; i < restoreBenchRegions; i++ {
		bounds = append(bounds, bytes.Clone(rows[len(rows)*i/restoreBenchRegions].Key))
	}
	regionOf := func(k []byte) int {
		return sort.Search(len(bounds), func(i int) bool { return bytes.Compare(bounds[i], k) > 0 })
	}
	cuts := make([]uint64, flushes+1)
	for i := range cuts {
		cuts[i] = startTS + (maxTS-startTS)*uint64(i)/uint64(flushes)
	}
	flushers := map[uint64]*flush.Flusher{}
	for s := uint64(1); s <= 3; s++ {
		f, err := flush.New(flush.Config{StoreID: s, Task: "bench", Dir: filepath.Join(tmp, fmt.Sprintf("spill-%d", s)), Storage: st,
			Settings: flush.Settings{KeyframeEvery: keyframeEvery}})
		if err != nil {
			return 0, nil, err
		}
		defer f.Close()
		flushers[s] = f
	}
	for w := 1; w <= flushes; w++ {
		batches := map[uint64][]logfile.Row{}
		for i := range rows {
			if r := &rows[i]; r.CommitTS > cuts[w-1] && r.CommitTS <= cuts[w] {
				s := uint64(1 + regionOf(r.Key)%3)
				batches[s] = append(batches[s], *r)
			}
		}
		covs := map[uint64][]*pitrpb.RegionCoverage{}
		for i := 0; i <= len(bounds); i++ {
			c := &pitrpb.RegionCoverage{RegionId: uint64(i + 1), FromTs: cuts[w-1], ToTs: cuts[w]}
			if i > 0 {
				c.StartKey = bounds[i-1]
			}
			if i < len(bounds) {
				c.EndKey = bounds[i]
			}
			covs[uint64(1+i%3)] = append(covs[uint64(1+i%3)], c)
		}
		for s, f := range flushers {
			for b := batches[s]; len(b) > 0; {
				n := min(len(b), 4096)
				if err := f.Add(ctx, b[:n]); err != nil {
					return 0, nil, err
				}
				b = b[n:]
			}
			if _, err := f.Flush(ctx, cuts[w], covs[s]); err != nil {
				return 0, nil, err
			}
		}
	}
	cpb, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: "bench", Ts: maxTS})
	if err := put(logfile.CheckpointPath, cpb, err); err != nil {
		return 0, nil, err
	}
	return maxTS, bounds, nil
}

// decodeAll decodes every file (one goroutine per CPU) and returns the time
// and the logical bytes seen.
func decodeAll(root string, files []*pitrpb.DataFile) (time.Duration, int64, error) {
	start := time.Now()
	var total atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, runtime.GOMAXPROCS(0))
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(files) {
					return
				}
				n, err := decodeFile(filepath.Join(root, filepath.FromSlash(files[i].Path)), files[i].Size)
				if err != nil {
					errs <- err
					return
				}
				total.Add(n)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return time.Since(start), total.Load(), nil
}

func decodeFile(path string, size int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	rd, err := logfile.NewReader(f, size)
	if err != nil {
		return 0, err
	}
	it := rd.Iter(nil, nil)
	defer it.Close()
	var n int64
	for it.Next() {
		n += it.Row().LogicalSize()
	}
	return n, it.Err()
}
