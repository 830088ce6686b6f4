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
//     was and as compacted, into fresh playgrounds.
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

	cdir := filepath.Join(env.Tmp, "compacted")
	if err := os.CopyFS(cdir, os.DirFS(dir)); err != nil {
		return nil, err
	}
	cst, err := storage.Open(ctx, "file://"+cdir)
	if err != nil {
		return nil, err
	}
	defer cst.Close()
	stopProfile, err := startProfile(os.Getenv("PITR_BENCH_COMPACT_PROFILE"))
	if err != nil {
		return nil, err
	}
	began := time.Now()
	res, err := restore.Compact(ctx, cst, restore.CompactOptions{MaxInputs: 1 << 20, FileTarget: compactBenchTarget})
	took := time.Since(began)
	stopProfile()
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	compactMBps := float64(res.InputBytes) / 1e6 / took.Seconds()
	after, err := restore.Load(ctx, cst)
	if err != nil {
		return nil, err
	}
	filesAfter := 0
	for _, m := range after.Metas {
		filesAfter += len(m.Meta.GetFiles())
	}
	env.Logf("%d files (%d metas) → %d files; %s", len(files), len(before.Metas), filesAfter, res.Summary())

	// The limit: decoding the compaction's own inputs (the files of the
	// metas it superseded, from the uncompacted copy) with as many
	// goroutines as it may use, in the same unit (file bytes in).
	var inputs []*pitrpb.DataFile
	for _, m := range after.Metas {
		if m.Supersedes == nil {
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
	d, _, err := decodeAll(dir, inputs)
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	decodeMBps := float64(inBytes) / 1e6 / d.Seconds()

	small, err := benchRestore(ctx, env, st, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	big, err := benchRestore(ctx, env, cst, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	return []Row{
		{Name: fmt.Sprintf("decode only of its %d inputs, %d CPUs (limit; file bytes in)", len(inputs), runtime.GOMAXPROCS(0)), Value: decodeMBps, Unit: "MB/s"},
		{Name: fmt.Sprintf("compact %d small files into %d of ≥ %s (file bytes in)", res.InputFiles, res.OutputFiles, storage.FormatBytes(compactBenchTarget)), Value: compactMBps, Unit: "MB/s",
			Baseline: "decode only (goal 0.5×)", Ratio: compactMBps / decodeMBps},
		{Name: fmt.Sprintf("restore of %d small files, every peer", len(files)), Value: small, Unit: "MB/s"},
		{Name: fmt.Sprintf("restore of the compacted log (%d files), every peer", filesAfter), Value: big, Unit: "MB/s",
			Baseline: "small files (goal 3×)", Ratio: big / small},
	}, nil
}
