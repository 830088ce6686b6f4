package pitr_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
)

// TestContinuousCompactionEndToEnd is the acceptance check of continuous
// compaction (issue #12) on the whole pipeline: a bank workload with
// splits and leader moves, flushed every second by each store's agent in
// chains of compactKeyframe metas, while the leading coordinator's
// maintenance pass compacts the sealed chains every second and deletes
// what they replace after a short grace. Afterwards, for each window of
// compactWindow of the sealed log, the files a restore of that window
// reads are bounded (smallBound: the files under the target), the
// compacted outputs are of the target size where a pass's data allows,
// the inputs are deleted after the grace, and restores at 10 random T of the
// compacted range read what the source reads at T, key for key.
func TestContinuousCompactionEndToEnd(t *testing.T) {
	const (
		stores = 3
		// compactKeyframe: chains of 5 one-second flushes, so that a
		// store seals one every 5 s of the run.
		compactKeyframe = 5
		compactWindow   = 5 * time.Second
		grace           = 5 * time.Second
	)
	runFor := runLength()
	ctx, p, rng := startE2E(t, pipeline.Options{Task: "compact",
		Cluster: testkit.Options{Playground: playground.Config{Stores: stores, MinTSInterval: 200 * time.Millisecond}},
		Agent:   func(_ uint64, cfg *agent.Config) { cfg.KeyframeEvery = compactKeyframe },
		Coordinator: func(_ int, cfg *coordinator.Config) {
			cfg.RetentionInterval = time.Second
			cfg.CompactFileTarget, cfg.CompactGrace = compactTarget, grace
			// One merge part: every output of a compacted meta but its
			// last is of the target (parts, each ending in a tail, are
			// restore's TestCompactParts).
			cfg.CompactConcurrency = 1
		}})
	flushed := &flushLog{st: p.Backup(), metas: map[string]*pitrpb.Meta{}, files: map[string]*pitrpb.DataFile{}, keyframe: map[uint64]uint64{}, newest: map[uint64]uint64{}}

	bank := &workload.Bank{Client: p.KV, Prefix: "cmp/", Accounts: 300, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 6, &st) })
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: runFor,
		Routine: []testkit.Action{p.Split(16, bankKey(bank)), p.MoveLeader(), nil},
		OnStep:  func(int, time.Duration) error { return flushed.scan(ctx) },
		Watch:   []*testkit.Workload{work},
	}
	require.NoError(t, chaos.Run(ctx))
	require.NoError(t, work.Stop())
	cp := p.WaitCheckpoint(p.TS(), 90*time.Second)

	// The sealed log ends at the horizon: the oldest of the stores' newest
	// keyframes (every chain before it is sealed). Compaction catches up
	// with it within a few passes; without compaction it never does, and
	// the bound below fails.
	require.NoError(t, flushed.scan(ctx))
	// A store that leads no region at the end (the chaos moves leaders)
	// writes no more metas, so its last chain is never sealed: it is left
	// out of the horizon, and its last chain's files out of the bound.
	horizon, idle := flushed.horizon(keyspace.Compose(keyspace.Time(cp).Add(-3*compactKeyframe*time.Second).UnixMilli(), 0))
	t.Logf("newest keyframes by store: %v, newest metas %v, %d idle at the end (%d metas read, %d deleted before they were read)",
		flushed.keyframe, flushed.newest, idle, len(flushed.metas), flushed.missed)
	require.Greater(t, horizon, p.StartTS, "the stores sealed chains")
	horizon = min(horizon, cp)
	var b *restore.Backup
	caughtUp := func() bool {
		var err error
		if b, err = restore.Load(ctx, p.Backup()); err != nil {
			return false
		}
		for _, m := range b.Metas {
			if m.Supersedes == nil && m.Meta.GetFlushTs() < horizon {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(15 * time.Second)
	for !caughtUp() && time.Now().Before(deadline) {
		require.NoError(t, flushed.scan(ctx))
		time.Sleep(250 * time.Millisecond) // polling storage; nothing to wait on
	}
	require.NoError(t, flushed.scan(ctx))
	require.NotNil(t, b, "the root loads")
	t.Logf("%d transfers; checkpoint %s, sealed log up to %s; the agents wrote %d metas, %d data files (%s); %d regions",
		st.Committed.Load(), keyspace.Format(cp), keyspace.Format(horizon), len(flushed.metas), len(flushed.files),
		storage.FormatBytes(flushed.bytes()), len(p.P.Cluster.Regions()))

	// Per window of the sealed log: the files a restore of the window
	// reads (NewPlan's rule: a commit in (A, B]), of the log as the agents
	// flushed it and as restore.Load reads it now.
	var windows []window
	for a := keyspace.Time(p.StartTS); !a.Add(compactWindow).After(keyspace.Time(horizon)); a = a.Add(compactWindow) {
		w := window{from: keyspace.Compose(a.UnixMilli(), 0), to: keyspace.Compose(a.Add(compactWindow).UnixMilli(), 0)}
		for _, f := range flushed.files {
			w.before.add(f, w.from, w.to)
		}
		seen := map[string]bool{}
		for _, m := range b.Metas {
			for _, f := range m.Meta.GetFiles() {
				if !seen[f.GetPath()] {
					seen[f.GetPath()] = true
					w.after.add(f, w.from, w.to)
				}
			}
		}
		windows = append(windows, w)
	}
	require.GreaterOrEqual(t, len(windows), 2, "the sealed log spans two windows")
	// The bound. A window of w meets at most ⌈w/K⌉+1 chains of a store
	// (chains of K one-second flushes), every chain is in one compacted
	// meta, and the outputs of a compacted meta are at least the target
	// but for its last: so at most stores × (⌈w/K⌉+1) of the files a
	// restore of the window reads are under the target, however much
	// data it holds. Before compaction they are about stores × w, one a
	// store a flush.
	chainsPerWindow := int((compactWindow+compactKeyframe*time.Second-1)/(compactKeyframe*time.Second)) + 1
	smallBound := stores*chainsPerWindow + idle*compactKeyframe
	for i, w := range windows {
		t.Logf("window %d [%s, %s): before %s; after %s (bound: %d under the target)", i,
			keyspace.Time(w.from).Format("15:04:05"), keyspace.Time(w.to).Format("15:04:05"), w.before, w.after, smallBound)
	}
	for i, w := range windows {
		require.LessOrEqual(t, w.after.small, smallBound, "window %d: %d of its %d files are under the target after compaction (before: %d of %d)",
			i, w.after.small, w.after.files, w.before.small, w.before.files)
	}

	// The compacted metas: their outputs are at least the target but for
	// the last of each (the rest of its data), and under three times the
	// target (a file is cut at the first key after it reaches the target,
	// overshooting by a row group of an eighth of it and the rest of that
	// key's versions, and takes in a tail under half of it).
	// A pass compacts what sealed since the last one, about a chain of
	// every store (K s of the log), so a compacted meta reaches the
	// target where those chains' data does. Those older than the grace
	// (and a pass) no longer have their inputs in storage.
	loaded := time.Now()
	var collected, full int
	for _, c := range b.Metas {
		if c.Supersedes == nil {
			continue
		}
		var sizes []string
		var total int64
		for i, f := range c.Meta.GetFiles() {
			sizes = append(sizes, storage.FormatBytes(f.GetSize()))
			total += f.GetSize()
			if i < len(c.Meta.GetFiles())-1 {
				require.GreaterOrEqual(t, f.GetSize(), int64(compactTarget), "%s: output %d of %d is below the target", c.Path, i, len(c.Meta.GetFiles()))
			}
			if f.GetSize() >= compactTarget {
				full++
			}
			require.Less(t, f.GetSize(), int64(3*compactTarget), "%s: output %d of %d is over three times the target", c.Path, i, len(c.Meta.GetFiles()))
		}
		t.Logf("compacted %s (%s): %d metas into %d files [%s] (%s), inputs deleted %v", c.Path, c.Created.Format("15:04:05"),
			len(c.Supersedes), len(c.Meta.GetFiles()), strings.Join(sizes, " "), storage.FormatBytes(total), !c.Pending)
		if loaded.Sub(c.Created) > grace+3*time.Second {
			require.False(t, c.Pending, "%s is %s old: its inputs are deleted", c.Path, loaded.Sub(c.Created))
			collected++
		}
	}
	require.Positive(t, collected, "inputs were deleted after the grace while the pipeline ran")
	require.Positive(t, full, "outputs of the target size")

	p.Verify(cp)
	points := randomPoints(rng, p.StartTS, horizon, 10)
	for i, T := range points {
		r := p.RestoreInto(i, T, pipeline.RestoreOptions{})
		testkit.RequireSame(t, p.ReadAll(T), r.Read, T)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored, %d files)", i, T, len(r.Read), r.Result.Rows, r.Result.Files)
	}
}

// compactTarget is the test's compaction file target. The bank's log is
// 10-25 kB a second in all, so a pass (about a chain of each store, 5 s)
// compacts 50-130 kB: 256 KiB would never be reached, and below about
// 32 KiB the row groups (an eighth of the target) are so small that
// Parquet's per-group overhead makes the outputs several times their
// inputs. At 32 KiB most passes write files of the target and a tail.
const compactTarget = 32 << 10

// flushLog is every meta the agents wrote, read as it appears (before the
// coordinator's compaction supersedes it and deletes it after the grace):
// the log a restore would read without compaction.
type flushLog struct {
	st       storage.Storage
	metas    map[string]*pitrpb.Meta
	files    map[string]*pitrpb.DataFile // the files with rows
	keyframe map[uint64]uint64           // store → its newest keyframe's flush ts
	newest   map[uint64]uint64           // store → its newest meta's flush ts
	missed   int                         // metas deleted before they were read
}

// scan reads the metas written since the last scan.
func (l *flushLog) scan(ctx context.Context) error {
	var paths []string
	err := l.st.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		if strings.HasSuffix(oi.Key, ".meta") && l.metas[oi.Key] == nil {
			paths = append(paths, oi.Key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(paths)
	for _, p := range paths {
		raw, err := l.st.Get(ctx, p)
		if errors.Is(err, storage.ErrNotFound) {
			l.missed++
			continue
		}
		if err != nil {
			return err
		}
		m, err := logfile.DecodeMeta(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		l.metas[p] = m
		for _, f := range m.GetFiles() {
			if f.GetRows() > 0 {
				l.files[f.GetPath()] = f
			}
		}
		if !logfile.IsDelta(m) {
			l.keyframe[m.GetStoreId()] = max(l.keyframe[m.GetStoreId()], m.GetFlushTs())
		}
		l.newest[m.GetStoreId()] = max(l.newest[m.GetStoreId()], m.GetFlushTs())
	}
	return nil
}

// horizon is the oldest newest keyframe of the stores still flushing at
// active (their newest meta at or after it): every chain they flushed
// before it is sealed. idle counts the stores that stopped before active
// (they lead no region: their last chain is never sealed). A store that
// never led a region wrote no meta and has no chain.
func (l *flushLog) horizon(active uint64) (h uint64, idle int) {
	h = ^uint64(0)
	for store, ts := range l.keyframe {
		if l.newest[store] < active {
			idle++
			continue
		}
		h = min(h, ts)
	}
	return h, idle
}

func (l *flushLog) bytes() int64 {
	var n int64
	for _, f := range l.files {
		n += f.GetSize()
	}
	return n
}

// window is one window (from, to] of the sealed log and what a restore of
// it reads, before and after compaction.
type window struct {
	from, to      uint64
	before, after fileCount
}

// fileCount counts the files a restore of a window reads.
type fileCount struct {
	files, small int // small: under the compaction target
	bytes        int64
	largest      int64
}

// add counts f if it holds a commit in (lo, hi], as NewPlan's rule.
func (c *fileCount) add(f *pitrpb.DataFile, lo, hi uint64) {
	if f.GetRows() == 0 || f.GetMinCommitTs() > hi || f.GetMaxCommitTs() <= lo {
		return
	}
	c.files++
	c.bytes += f.GetSize()
	c.largest = max(c.largest, f.GetSize())
	if f.GetSize() < compactTarget {
		c.small++
	}
}

func (c fileCount) String() string {
	return fmt.Sprintf("%d files (%d under the target), %s, largest %s", c.files, c.small, storage.FormatBytes(c.bytes), storage.FormatBytes(c.largest))
}
