package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
)

// The compact section (issue 12): PITR_BENCH_COMPACT_MIB (default 64) MiB
// of keys and values as a log of many small files — 3 stores, 16 regions,
// 240 flushes, a keyframe every 40 metas of a store — then
//
//   - the limit: decoding every file with all CPUs (restore's decode rate);
//   - pitr compact (restore.Compact) of it, beside that limit;
//   - a restore to the checkpoint (SSTs to every peer) of the log as it
//     was and as compacted, into fresh playgrounds.
func init() {
	register(Section{Name: "compact", Run: runCompactBench})
}

const (
	compactBenchFlushes  = 240
	compactBenchKeyframe = 40
)

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
	d, n, err := decodeAll(dir, files)
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if n != logical {
		return nil, fmt.Errorf("decoded %d logical bytes, want %d", n, logical)
	}
	decodeMBps := float64(logical) / 1e6 / d.Seconds()

	cdir := filepath.Join(env.Tmp, "compacted")
	if err := os.CopyFS(cdir, os.DirFS(dir)); err != nil {
		return nil, err
	}
	cst, err := storage.Open(ctx, "file://"+cdir)
	if err != nil {
		return nil, err
	}
	defer cst.Close()
	began := time.Now()
	res, err := restore.Compact(ctx, cst, restore.CompactOptions{MaxInputs: 1 << 20})
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	took := time.Since(began)
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

	small, err := benchRestore(ctx, env, st, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	big, err := benchRestore(ctx, env, cst, cp, bounds, logical, false)
	if err != nil {
		return nil, err
	}
	return []Row{
		{Name: fmt.Sprintf("decode only, %d CPUs (limit)", runtime.GOMAXPROCS(0)), Value: decodeMBps, Unit: "MB/s"},
		{Name: fmt.Sprintf("compact %d small files into %d (file bytes in)", res.InputFiles, res.OutputFiles), Value: compactMBps, Unit: "MB/s",
			Baseline: "decode only (goal 0.5×)", Ratio: compactMBps / decodeMBps},
		{Name: fmt.Sprintf("restore of %d small files, every peer", len(files)), Value: small, Unit: "MB/s"},
		{Name: fmt.Sprintf("restore of the compacted log (%d files), every peer", filesAfter), Value: big, Unit: "MB/s",
			Baseline: "small files (goal 3×)", Ratio: big / small},
	}, nil
}
