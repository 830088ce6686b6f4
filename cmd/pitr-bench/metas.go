package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/testkit/metasim"
)

// The metas section (issue 12): a day of 5 s flushes of 3 stores at 10k
// regions, idle, as agents write it (testkit/metasim: chains with a
// keyframe an hour), in memory; the bytes it takes beside the full lists
// metas were before format 3, and the heap and time of planning a restore
// over it (restore.Load and NewPlan, as `pitr restore --dry-run`) beside
// planning over one hour of full lists, the old format, scaled to a day.
func init() {
	register(Section{Name: "metas", Run: runMetasBench})
}

const (
	metasRegions     = 10000
	metasDayFlushes  = 17280
	metasHeapGoalMiB = 512
)

func runMetasBench(ctx context.Context, env *Env) ([]Row, error) {
	plan := func(st storage.Storage) (heap uint64, took time.Duration, err error) {
		began := time.Now()
		heap, held := metasim.PeakHeap(func() {
			var b *restore.Backup
			if b, err = restore.Load(ctx, st); err != nil {
				return
			}
			_, err = restore.NewPlan(restore.PlanInput{Task: b.Task, Checkpoint: b.Checkpoint, Metas: b.Metas, Coverage: b.Coverage, RestoreTS: b.Checkpoint})
		})
		return heap - min(heap, held), time.Since(began), err
	}
	day, err := storage.Open(ctx, "mem://metas-day")
	if err != nil {
		return nil, err
	}
	defer day.Close()
	sim, err := metasim.Write(ctx, day, metasim.Options{Regions: metasRegions, Flushes: metasDayFlushes})
	if err != nil {
		return nil, err
	}
	env.Logf("a day of chains: %d metas, %s (full lists: about %s)", sim.Metas, storage.FormatBytes(sim.MetaBytes), storage.FormatBytes(sim.FullBytes))
	dayHeap, dayTook, err := plan(day)
	if err != nil {
		return nil, fmt.Errorf("plan a day of chains: %w", err)
	}
	_ = day.Close()

	hour, err := storage.Open(ctx, "mem://metas-hour")
	if err != nil {
		return nil, err
	}
	defer hour.Close()
	full, err := metasim.Write(ctx, hour, metasim.Options{Regions: metasRegions, Flushes: metasDayFlushes / 24, FullLists: true})
	if err != nil {
		return nil, err
	}
	hourHeap, hourTook, err := plan(hour)
	if err != nil {
		return nil, fmt.Errorf("plan an hour of full lists: %w", err)
	}
	env.Logf("an hour of full lists: %d metas, %s; planned with %s of heap in %s", full.Metas, storage.FormatBytes(full.MetaBytes),
		storage.FormatBytes(int64(hourHeap)), hourTook.Round(time.Millisecond))

	perStore := func(b int64) float64 { return float64(b) / 3 / (1 << 20) }
	fullDay := float64(full.MetaBytes) * 24
	return []Row{
		{Name: "meta bytes per store-day, full lists (old)", Value: fullDay / 3 / (1 << 20), Unit: "MiB"},
		{Name: "meta bytes per store-day, chains", Value: perStore(sim.MetaBytes), Unit: "MiB",
			Baseline: "smaller than full lists", Ratio: fullDay / float64(sim.MetaBytes)},
		{Name: "plan a day of chains: heap", Value: float64(dayHeap) / (1 << 20), Unit: "MiB",
			Baseline: fmt.Sprintf("of the %d MiB goal", metasHeapGoalMiB), Ratio: float64(dayHeap) / (metasHeapGoalMiB << 20)},
		{Name: "plan a day of chains: time", Value: dayTook.Seconds(), Unit: "s"},
		{Name: "plan a day of full lists: time (an hour × 24)", Value: 24 * hourTook.Seconds(), Unit: "s"},
		{Name: "plan a day of chains: time vs full lists", Value: dayTook.Seconds(), Unit: "s",
			Baseline: "of full lists", Ratio: dayTook.Seconds() / (24 * hourTook.Seconds())},
	}, nil
}
