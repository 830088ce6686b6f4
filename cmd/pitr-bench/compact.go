package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

// The compact section (issue 12): PITR_BENCH_COMPACT_MIB (default 64) MiB
// of keys and values as a log of many small files — 3 stores, 16 regions,
// 240 flushes, a keyframe every 40 metas of a store — then
//
//   - pitr compact (restore.Compact) of it (file target compactBenchTarget);
//   - the limit beside it: decoding the files it compacted with all CPUs
//     (restore's decode rate; compaction may use as many), both in file
//     bytes read per second;
//   - a restore to the checkpoint (SSTs to every peer) of the log as it
//     was and as compacted, into fresh playgrounds, from file:// and from
//     MinIO on loopback (no added latency: a request there costs what
//     loopback HTTP and MinIO cost, well under a cloud store's).
//
// The compaction and the limit are each the best of benchRounds rounds.
//
// PITR_BENCH_COMPACT_PROFILE=path writes a CPU profile of the compaction.
func init() {
	register(Section{Name: "compact", Run: runCompactBench})
}

const (
	compactBenchFlushes  = 240
	compactBenchKeyframe = 40
	// compactBenchTarget is the compaction's file target: small enough
	// that the run's inputs (about 36 MB at the default size) fill more
	// than one key-range part, as a production run's 128 MiB target is
	// filled by a backlog of hundreds of MiB.
	compactBenchTarget = 8 << 20
)

// startProfile writes a CPU profile to path until the returned stop is
// called ("" : no profile).
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func runCompactBench(ctx context.Context, env *Env) ([]Row, error) {
	size, err := sizeMiB("PITR_BENCH_COMPACT_MIB", 64)
	if err != nil {
		return nil, err
	}
	quietClientGo()
	rows, arena := benchRows(size)
	logical := int64(len(arena))
	dir := filepath.Join(env.Tmp, "small")
	st, err := storage.Open(ctx, "file://"+dir)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	cp, bounds, err := writeBenchBackup(ctx, st, env.Tmp, rows, compactBenchFlushes, compactBenchKeyframe)
	if err != nil {
		return nil, fmt.Errorf("make backup: %w", err)
	}
	rows, arena = nil, nil
	runtime.GC()
	before, err := restore.Load(ctx, st)
	if err != nil {
		return nil, err
	}
	var files []*pitrpb.DataFile
	for _, m := range before.Metas {
		files = append(files, m.Meta.GetFiles()...)
	}

	// benchRounds rounds, each a compaction of a fresh copy and the
	// decode of its inputs, one after the other so that load from outside
	// falls on both alike; the best of each is kept. The last copy is the
	// compacted log restored below.
	var (
		cst                     storage.Storage
		res                     *restore.CompactResult
		after                   *restore.Backup
		inputs                  []*pitrpb.DataFile
		compactMBps, decodeMBps float64
	)
	for round := range benchRounds {
		cdir := filepath.Join(env.Tmp, fmt.Sprintf("compacted-%d", round))
		if err := os.CopyFS(cdir, os.DirFS(dir)); err != nil {
			return nil, err
		}
		if cst, err = storage.Open(ctx, "file://"+cdir); err != nil {
			return nil, err
		}
		defer cst.Close()
		runtime.GC()
		profile := ""
		if round == 0 {
			profile = os.Getenv("PITR_BENCH_COMPACT_PROFILE")
		}
		stopProfile, err := startProfile(profile)
		if err != nil {
			return nil, err
		}
		began := time.Now()
		res, err = restore.Compact(ctx, cst, restore.CompactOptions{MaxInputs: 1 << 20, FileTarget: compactBenchTarget})
		took := time.Since(began)
		stopProfile()
		if err != nil {
			return nil, fmt.Errorf("compact: %w", err)
		}
		compactMBps = max(compactMBps, float64(res.InputBytes)/1e6/took.Seconds())
		if after, err = restore.Load(ctx, cst); err != nil {
			return nil, err
		}

		// The limit: decoding the compaction's own inputs (the files of
		// the metas it superseded, from the uncompacted copy) with as
		// many goroutines as it may use, in the same unit (file bytes in).
		inputs = nil
		for _, m := range after.Metas {
			if !m.IsCompacted() {
				continue
			}
			sup := map[string]bool{}
			for _, p := range m.Supersedes {
				sup[p] = true
			}
			for _, bm := range before.Metas {
				if sup[bm.Path] {
					inputs = append(inputs, bm.Meta.GetFiles()...)
				}
			}
		}
		var inBytes int64
		for _, f := range inputs {
			inBytes += f.GetSize()
		}
		if inBytes != res.InputBytes {
			return nil, fmt.Errorf("the superseded metas hold %d file bytes, compact read %d", inBytes, res.InputBytes)
		}
		runtime.GC()
		d, _, err := decodeAll(dir, inputs)
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		decodeMBps = max(decodeMBps, float64(inBytes)/1e6/d.Seconds())
		env.Logf("round %d: compact %.1f MB/s, decode %.1f MB/s", round, float64(res.InputBytes)/1e6/took.Seconds(), float64(inBytes)/1e6/d.Seconds())
	}
	filesAfter := 0
	for _, m := range after.Metas {
		filesAfter += len(m.Meta.GetFiles())
	}
	env.Logf("%d files (%d metas) → %d files; %s", len(files), len(before.Metas), filesAfter, res.Summary())

	// The restores: of the log as it was and as compacted, from file://
	// and from MinIO over loopback (the same objects, copied), where each
	// small file costs its own requests.
	small, err := benchRestore(ctx, env, st, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	big, err := benchRestore(ctx, env, cst, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	bin, err := storagetest.FindToolIn(filepath.Join(env.Root, ".tools"), "minio")
	if err != nil {
		return nil, fmt.Errorf("%w (run scripts/tools.sh)", err)
	}
	m, err := storagetest.LaunchMinIO(bin, filepath.Join(env.Tmp, "minio"))
	if err != nil {
		return nil, err
	}
	defer m.Stop()
	if err := m.EnsureBucket(ctx, "bench"); err != nil {
		return nil, err
	}
	var s3MBps [2]float64
	for i, from := range []storage.Storage{st, cst} {
		s3s, err := storage.Open(ctx, m.URL("bench", fmt.Sprintf("log-%d", i)))
		if err != nil {
			return nil, err
		}
		defer s3s.Close()
		if err := copyObjects(ctx, from, s3s); err != nil {
			return nil, fmt.Errorf("copy to MinIO: %w", err)
		}
		if s3MBps[i], err = benchRestore(ctx, env, s3s, cp, bounds, logical, false); err != nil {
			return nil, err
		}
	}
	return []Row{
		{Name: fmt.Sprintf("decode only of its %d inputs, %d CPUs (limit; file bytes in)", len(inputs), runtime.GOMAXPROCS(0)), Value: decodeMBps, Unit: "MB/s"},
		{Name: fmt.Sprintf("compact %d small files into %d of ≥ %s (file bytes in)", res.InputFiles, res.OutputFiles, storage.FormatBytes(compactBenchTarget)), Value: compactMBps, Unit: "MB/s",
			Baseline: "decode only (goal 0.5×)", Ratio: compactMBps / decodeMBps},
		{Name: fmt.Sprintf("restore of %d small files, every peer, file://", len(files)), Value: small, Unit: "MB/s"},
		{Name: fmt.Sprintf("restore of the compacted log (%d files), every peer, file://", filesAfter), Value: big, Unit: "MB/s",
			Baseline: "small files (goal 3×)", Ratio: big / small},
		{Name: fmt.Sprintf("restore of %d small files, every peer, s3:// (MinIO)", len(files)), Value: s3MBps[0], Unit: "MB/s"},
		{Name: fmt.Sprintf("restore of the compacted log (%d files), every peer, s3:// (MinIO)", filesAfter), Value: s3MBps[1], Unit: "MB/s",
			Baseline: "small files (goal 3×)", Ratio: s3MBps[1] / s3MBps[0]},
	}, nil
}

// copyObjects copies every object of from into to.
func copyObjects(ctx context.Context, from, to storage.Storage) error {
	var keys []string
	if err := from.List(ctx, "", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		b, err := from.Get(ctx, k)
		if err != nil {
			return err
		}
		if err := to.Put(ctx, k, b); err != nil {
			return err
		}
	}
	return nil
}
