package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/volsnap"
	"github.com/pitr-io/pitr/volume/local"
)

// The volume section (DESIGN.md §12): volume backups of a 3-store
// playground holding PITR_BENCH_VOLUME_MIB (default 128) MiB of keys and
// values, and of one holding a quarter of that, with the local provider:
//
//   - the window PD's scheduling and GC are paused (the part of a volume
//     backup the cluster feels), at both sizes: it should not grow with the
//     data, so the large one is beside the small one;
//   - the whole backup, until every snapshot completed, beside a plain
//     `cp -r` of the same volumes (what the local provider's copy does);
//   - a restore from the large backup (prepare: volumes from the
//     snapshots; the stores started on them; TiKV's recovery protocol)
//     beside a snapshot restore (pitr backup full, then restore to every
//     peer) of the same data, as MB/s of keys and values.
func init() {
	register(Section{Name: "volume", Run: runVolumeBench})
}

const volumeBenchRegions = 16

func runVolumeBench(ctx context.Context, env *Env) ([]Row, error) {
	size, err := sizeMiB("PITR_BENCH_VOLUME_MIB", 128)
	if err != nil {
		return nil, err
	}
	quietClientGo()
	small, err := volumeRun(ctx, env, size/4, false)
	if err != nil {
		return nil, err
	}
	large, err := volumeRun(ctx, env, size, true)
	if err != nil {
		return nil, err
	}
	mb := func(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	return []Row{
		{Name: fmt.Sprintf("volume backup, PD paused, %d MiB", small.logical>>20), Value: ms(small.paused), Unit: "ms"},
		{Name: fmt.Sprintf("volume backup, PD paused, %d MiB", large.logical>>20), Value: ms(large.paused), Unit: "ms",
			Baseline: fmt.Sprintf("at %d MiB (flat: ~1×)", small.logical>>20), Ratio: ms(large.paused) / ms(small.paused)},
		{Name: fmt.Sprintf("cp -r of the volumes, %d MiB (limit)", large.logical>>20), Value: large.copyTime.Seconds(), Unit: "s"},
		{Name: fmt.Sprintf("volume backup until complete, %d MiB", large.logical>>20), Value: large.total.Seconds(), Unit: "s",
			Baseline: "cp -r (lower is better)", Ratio: large.total.Seconds() / large.copyTime.Seconds()},
		{Name: "snapshot restore, every peer, same data", Value: large.snapRestoreMBps, Unit: "MB/s"},
		{Name: "volume restore (prepare + recovery)", Value: mb(large.logical, large.volRestore), Unit: "MB/s",
			Baseline: "snapshot restore", Ratio: mb(large.logical, large.volRestore) / large.snapRestoreMBps},
	}, nil
}

type volumeResult struct {
	logical         int64
	paused, total   time.Duration
	copyTime        time.Duration
	volRestore      time.Duration
	snapRestoreMBps float64
}

// volumeRun loads a source of size MiB, takes a volume backup of it, and
// with restores also restores it both ways.
func volumeRun(ctx context.Context, env *Env, size int64, restores bool) (*volumeResult, error) {
	dir := filepath.Join(env.Tmp, fmt.Sprintf("volume-%d", size>>20))
	src := filepath.Join(dir, "source")
	p, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: src, GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	out := &volumeResult{}
	bounds, logical, _, err := loadBenchRows(ctx, p, size, volumeBenchRegions)
	if err != nil {
		return nil, err
	}
	out.logical = logical
	cfg := connector.Config{PDAddrs: []string{p.PDAddr()}, Component: "pitr-bench"}
	kv, err := connector.KV(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer kv.Close()
	cl, err := connector.Connect(ctx, cfg, task.Root)
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	// Limit: a plain copy of the store volumes (the KV volume once per
	// store, as each store's snapshot copies it).
	vf, err := volsnap.ReadVolumeFile(filepath.Join(src, playground.VolumesFileName))
	if err != nil {
		return nil, err
	}
	start := time.Now()
	for i, s := range vf.TiKV.Stores {
		for j, v := range s.Volumes {
			if b, err := exec.CommandContext(ctx, "cp", "-r", v.ID, filepath.Join(dir, fmt.Sprintf("cp-%d-%d", i, j))).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("cp -r: %v: %s", err, b)
			}
		}
	}
	out.copyTime = time.Since(start)

	prov, err := local.New(filepath.Join(dir, "provider"))
	if err != nil {
		return nil, err
	}
	own, err := storage.Open(ctx, "file://"+filepath.Join(dir, "volume-backup"))
	if err != nil {
		return nil, err
	}
	defer own.Close()
	// A cluster that has been running: every store has reported its min
	// resolved ts to PD (the first report comes a second after start).
	for p.PD.MinResolvedTS() == 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	res, err := volsnap.Backup(ctx, volsnap.BackupOptions{Storage: own, Provider: prov, File: vf, PD: cl.PD, PDAddrs: cfg.PDAddrs,
		Poll: 50 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		return nil, fmt.Errorf("volume backup: %w", err)
	}
	out.paused, out.total = res.Paused, res.Duration
	env.Logf("volume backup of %d MiB: %d snapshots, %d MiB, paused %s, complete in %s (cp -r %s)", out.logical>>20, res.Snapshots, res.Bytes>>20,
		res.Paused.Round(time.Microsecond), res.Duration.Round(time.Millisecond), out.copyTime.Round(time.Millisecond))
	if !restores {
		return out, nil
	}

	// The snapshot path on the same data: a task root, its snapshot at the
	// start ts, restored to every peer.
	url := "file://" + filepath.Join(dir, "task")
	st, err := storage.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	rec, err := task.StartTask(ctx, cl.Etcd, cl.PD, task.StartOptions{Name: "bench-volume", StorageURL: url})
	if err != nil {
		return nil, fmt.Errorf("start task: %w", err)
	}
	start0 := rec.GetInfo().GetStartTs()
	if _, err := snapshot.Run(ctx, snapshot.Options{Storage: st, StorageURL: url, PD: cl.PD, KV: kv.KVStore, BackupTS: start0, Logger: quietLogger()}); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if out.snapRestoreMBps, err = benchRestore(ctx, env, st, start0, bounds, out.logical, false); err != nil {
		return nil, err
	}

	// The volume path: PD alone, prepare, the stores on the new volumes,
	// recovery.
	start = time.Now()
	dst, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: filepath.Join(dir, "target"), DeferStores: true, GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	info, err := volsnap.Load(ctx, own, "")
	if err != nil {
		return nil, err
	}
	tcfg := connector.Config{PDAddrs: []string{dst.PDAddr()}, Component: "pitr-bench"}
	prepared, err := volsnap.Prepare(ctx, volsnap.PrepareOptions{Provider: prov, Backup: info, PDAddrs: tcfg.PDAddrs, Logger: quietLogger()})
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	file := filepath.Join(dir, "restore-volumes.json")
	if err := volsnap.WriteVolumeFile(file, prepared); err != nil {
		return nil, err
	}
	prepTime := time.Since(start)
	if err := dst.StartStoresFromVolumes(ctx, file); err != nil {
		return nil, err
	}
	startTime := time.Since(start) - prepTime
	tcl, err := connector.Connect(ctx, tcfg, task.Root)
	if err != nil {
		return nil, err
	}
	defer tcl.Close()
	if _, err := volsnap.RestoreData(ctx, volsnap.DataOptions{
		Recover: volsnap.RecoverOptions{PD: tcl.PD, PDAddrs: tcfg.PDAddrs, Logger: quietLogger()},
		Etcd:    tcl.Etcd, Backup: info, Restore: restore.Options{Source: own, RestoreTS: info.ResolvedTS()},
	}); err != nil {
		return nil, fmt.Errorf("volume restore: %w", err)
	}
	out.volRestore = time.Since(start)
	env.Logf("volume restore of %d MiB: %s (prepare %s, stores started on the volumes %s, recovery %s)", out.logical>>20, out.volRestore.Round(time.Millisecond),
		prepTime.Round(time.Millisecond), startTime.Round(time.Millisecond), (out.volRestore - prepTime - startTime).Round(time.Millisecond))
	return out, nil
}
