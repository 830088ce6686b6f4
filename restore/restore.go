package restore

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/txnkv"
	"golang.org/x/sync/errgroup"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/merge"
	"github.com/pitr-io/pitr/snapshot"
)

// Defaults for the zero fields of Options.
const (
	DefaultConcurrency  = 8
	DefaultMemoryBudget = 1 << 30
	DefaultChunkBytes   = 8 << 20
)

// Options configures a restore.
type Options struct {
	// Source is the backup's storage root.
	Source Source
	// PDAddrs are the PD addresses of the target cluster.
	PDAddrs []string
	// TLS is the target cluster's TLS set-up (zero: plaintext), for PD,
	// its etcd and HTTP API, and every store's gRPC and status ports.
	TLS connector.TLS
	// RestoreTS is T.
	RestoreTS uint64
	// Snapshot, when set, is the storage of the base snapshot to use
	// (--snapshot: a snapshot root of its own); nil: the newest fitting
	// snapshot under the task root (snapshot/<ts>/), if any.
	Snapshot Source
	// Volume, when set, says the target already holds the cluster as it
	// was at Volume.BackupTS, recovered from a volume backup (package
	// volsnap): the restore writes the log in (BackupTS, T] only, into a
	// target that is not empty, and skips the checksum (a volume backup
	// has no range checksums to compare with).
	Volume *VolumeBase
	// SkipChecksum skips the post-restore checksum, for a target that
	// legitimately holds other keys in the task ranges.
	SkipChecksum bool
	// Force writes into a target that already holds data in the task
	// ranges.
	Force bool
	// ProgressFile records finished key ranges so a rerun skips them;
	// empty: DefaultProgressPath.
	ProgressFile string
	// Concurrency bounds the key ranges restored at once (and the files
	// verified at once).
	Concurrency int
	// MemoryBudget bounds the memory of reading and writing (open row
	// groups and chunks being written), however large the log is.
	MemoryBudget int64
	// ChunkBytes is the key+value bytes of one Write+MultiIngest.
	ChunkBytes int64
	// LeaderOnly writes each chunk's SST to the leader's store only, not to
	// every peer's: a benchmark of the playground (started with
	// importer.Limits.LeaderOnlyIngest), whose stores share one engine. A
	// real TiKV needs the SST on every peer (each applies the ingest from
	// its own copy; a follower without one panics), so Run refuses it
	// (ErrLeaderOnly) unless every store carries the playground's label.
	LeaderOnly bool
	// MaxAttempts bounds the tries of one region's write against region
	// errors and unreachable stores (backoff 50 ms doubling to 2 s);
	// default 30. ServerIsBusy is not an attempt (see BusyTimeout).
	MaxAttempts int
	// Prepare configures what is done to the target around the writes.
	Prepare PrepareOptions
	// BusyTimeout bounds how long one region's ingest keeps being retried
	// while the target answers ServerIsBusy; default DefaultBusyTimeout.
	BusyTimeout time.Duration
	// ImportModeInterval is how often the target's stores are switched to
	// import mode again while the restore writes; default
	// DefaultImportModeInterval. It must be shorter than the stores'
	// import.import-mode-timeout (TiKV's default 10 min).
	ImportModeInterval time.Duration
	// GCHoldInterval is how often gc.ratio-threshold = -1 is re-applied to
	// the target's stores while the restore runs (gc.go); default
	// DefaultGCHoldInterval.
	GCHoldInterval time.Duration
	// Progress, when set, receives the progress bar.
	Progress io.Writer
	// Metrics, when set, gets the restore's progress as pitr_restore_*
	// (metrics.go) while it runs.
	Metrics prometheus.Registerer
	Logger  hclog.Logger

	hooks *hooks // tests only
}

// hooks let the package's tests watch and interrupt a restore.
type hooks struct {
	// ingested is called after each ingest with the versions it wrote.
	ingested func(c *chunk, rows []kv)
	// unitsDone is called after units are recorded as done.
	unitsDone func(units []keyspace.Range)
}

func (o *Options) setDefaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.MemoryBudget <= 0 {
		o.MemoryBudget = DefaultMemoryBudget
	}
	if o.ChunkBytes <= 0 {
		o.ChunkBytes = DefaultChunkBytes
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 30
	}
	if o.GCHoldInterval <= 0 {
		o.GCHoldInterval = DefaultGCHoldInterval
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
}

// PlanRestore reads the backup's metadata (and its snapshots', or snap's
// when set) and plans a restore to ts without touching the data files or
// any cluster (pitr restore --dry-run).
func PlanRestore(ctx context.Context, src Source, ts uint64, snap Source) (*Plan, error) {
	_, p, err := loadPlan(ctx, src, snap, nil, ts)
	return p, err
}

// PlanVolumeRestore is PlanRestore onto a target recovered from a volume
// backup at vol.BackupTS.
func PlanVolumeRestore(ctx context.Context, src Source, ts uint64, vol *VolumeBase) (*Plan, error) {
	_, p, err := loadPlan(ctx, src, nil, vol, ts)
	return p, err
}

func loadPlan(ctx context.Context, src, snap Source, vol *VolumeBase, ts uint64) (*Backup, *Plan, error) {
	b, err := Load(ctx, src)
	if err != nil {
		return nil, nil, err
	}
	var snaps []snapshot.Info
	explicit := false
	if vol == nil {
		if snaps, explicit, err = loadSnapshots(ctx, src, snap); err != nil {
			return nil, nil, err
		}
	}
	url := b.URL
	if snap != nil {
		url = snap.URL()
	}
	p, err := NewPlan(PlanInput{Task: b.Task, Checkpoint: b.Checkpoint, Metas: b.Metas, Coverage: b.Coverage, TruncatedTo: b.TruncatedTo, RestoreTS: ts,
		Snapshots: snaps, Explicit: explicit, SnapshotURL: url, Volume: vol})
	return b, p, err
}

// Run restores the backup to RestoreTS into the target cluster:
//
//  1. read the metadata, the snapshots (the task root's, or Snapshot's)
//     and plan: the base and the log window (B, T] (refusals:
//     ErrNotBackup, ErrFormat, ErrOutOfRange, ErrNoBase, ErrMissing for a
//     coverage hole);
//  2. check every file the remaining work needs, the base's included,
//     against its size and sha256 (ErrMissing, ErrCorrupt) — before
//     anything is written;
//  3. check the target: its TSO is past T, and it holds nothing in the
//     task ranges unless an earlier run of this restore wrote it or Force
//     (ErrTargetNotEmpty), and no change stream is registered on it
//     (ErrTargetInUse); then pause PD's schedulers and merges and pre-split
//     the target (prepare.go; undone when Run returns);
//  4. turn GC off on every TiKV of the target (gc.go; ErrUnavailable when
//     a store cannot be reached), and keep it off until the end;
//  5. per job (a run of source-region ranges), k-way merge the files that
//     meet it, keep every version with commit_ts ≤ T (deletes included),
//     and write it with its commit_ts through import_sstpb, region by
//     region, in parallel; record finished ranges in the progress file;
//  6. unless SkipChecksum, ask the target for the checksum of every range
//     a single-pass sweep summed (checksum.go) and compare (ErrChecksum).
//
// Refusals happen before the first write, so the target is untouched.
// Once a run has written (this one or an earlier one with the same progress
// file), every error is a *WrittenError, which says how far it got. GC is
// set back on the target's stores on every return, also after a refusal
// and on a rerun of a restore that was killed.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	o.setDefaults()
	log := o.Logger.Named("restore")
	start := time.Now()
	if rb := ReadBudget(o.Concurrency, o.MemoryBudget, o.ChunkBytes); rb <= 0 {
		return nil, fmt.Errorf("memory budget %d bytes is too small for concurrency %d: the chunk buffers alone need more (see CheckBudget)", o.MemoryBudget, o.Concurrency)
	}
	b, plan, err := loadPlan(ctx, o.Source, o.Snapshot, o.Volume, o.RestoreTS)
	if err != nil {
		return nil, err
	}
	if o.Volume != nil && !o.SkipChecksum {
		log.Info("no checksum after the restore: a volume base has no range checksums to compare the target with")
		o.SkipChecksum = true
	}
	srcs := sources{log: o.Source, base: o.Snapshot}
	var sumKV *txnkv.Client
	if !o.SkipChecksum {
		// Before the target's other PD clients (connector.KV).
		if sumKV, err = connector.KV(ctx, connector.Config{PDAddrs: o.PDAddrs, TLS: o.TLS, Component: "pitr-restore"}); err != nil {
			return nil, fmt.Errorf("connect to the target for its checksum: %w", err)
		}
		defer sumKV.Close()
	}
	tgt, err := dialTarget(ctx, o.PDAddrs, o.TLS, log)
	if err != nil {
		return nil, err
	}
	defer tgt.Close()
	tgt.maxAttempts, tgt.leaderOnly = o.MaxAttempts, o.LeaderOnly
	if o.BusyTimeout > 0 {
		tgt.busyTimeout = o.BusyTimeout
	}
	if o.LeaderOnly {
		if err := tgt.checkLeaderOnly(ctx); err != nil {
			return nil, err
		}
	}
	path := o.ProgressFile
	if path == "" {
		path = DefaultProgressPath(b.URL, plan.RestoreTS, tgt.clusterID)
	}
	prog, err := openProgress(path, progressState{Storage: b.URL, Task: plan.Task, RestoreTS: plan.RestoreTS, ClusterID: tgt.clusterID})
	if err != nil {
		return nil, err
	}
	defer func() {
		// Set GC back (recorded by this run or by one that was killed).
		if gerr := restoreGC(ctx, tgt.pd, prog, log, tgt.tls, tgt.http); gerr != nil {
			if err == nil {
				err = gerr
			} else {
				err = fmt.Errorf("%w; %w", err, gerr)
			}
		}
		err = writtenError(err, path, plan, prog)
	}()
	res = &Result{RestoreTS: plan.RestoreTS}
	if plan.Base != nil {
		res.BaseTS = plan.Base.BackupTS
	}
	if prog.finished() {
		res.AlreadyDone, res.Duration = true, time.Since(start)
		return res, nil
	}

	files, skipped := filesLeft(plan, prog)
	res.UnitsSkipped, res.Files = skipped, len(files)
	for _, f := range files {
		res.FileBytes += f.File.GetSize()
	}
	earlier := unitsDoneBefore(plan, prog)
	log.Info("plan", "restore_ts", plan.RestoreTS, "base", baseRoot(plan), "log_from", plan.LogFrom, "files", len(files), "units", len(plan.Units), "units_done", res.UnitsSkipped, "progress_file", path)

	m := newMeter()
	if o.Metrics != nil {
		c := meterCollector{m: m, task: plan.Task}
		if err := o.Metrics.Register(c); err != nil {
			return nil, fmt.Errorf("register restore metrics: %w", err)
		}
		defer o.Metrics.Unregister(c)
	}
	if o.Progress != nil {
		dctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); m.draw(dctx, o.Progress) }()
		defer func() { stop(); wg.Wait() }()
	}

	// Verify before writing (I7).
	var verifyBytes int64
	for _, f := range files {
		verifyBytes += f.File.GetSize()
	}
	m.setPhase("verify", verifyBytes)
	if err := checkFiles(ctx, srcs, files, o.Concurrency, func(n int64) { m.done.Add(n) }); err != nil {
		return nil, err
	}

	now, err := tgt.ts(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: get a timestamp from the target's PD: %v", ErrUnavailable, err)
	}
	if now <= plan.RestoreTS {
		return nil, fmt.Errorf("the target cluster's TSO %s is not past the restore point %s: restored versions would be in its future",
			keyspace.Format(now), keyspace.Format(plan.RestoreTS))
	}
	if !prog.started() && !o.Force && o.Volume == nil {
		if err := tgt.checkEmpty(ctx, plan.Ranges, now); err != nil {
			return nil, err
		}
	}
	undo, err := prepareTarget(ctx, o, log, tgt, plan) // prepare.go: refuse a target in use, pause PD, pre-split
	if err != nil {
		return nil, err
	}
	defer undo()
	hold := newGCHold(tgt.pd, prog, log, tgt.tls, tgt.http)
	if err := hold.start(ctx, o.GCHoldInterval); err != nil {
		return nil, err
	}
	defer hold.halt()
	if err := prog.markStarted(); err != nil {
		return nil, err
	}

	var logical int64
	for _, f := range files {
		logical += f.File.GetLogicalBytes()
	}
	m.setPhase("restore", logical)
	im := startImportMode(ctx, tgt, o.ImportModeInterval, log)
	r := newRunner(o, log, plan, files, tgt, prog, m)
	err = r.run(ctx, logical)
	if err == nil {
		err = ctx.Err()
	}
	_ = im.Close() // logged; each store also returns to normal mode by itself
	if err == nil && !o.SkipChecksum {
		err = r.verifyChecksums(ctx, sumKV.KVStore, tgt.ts, earlier, res)
	}
	if perr := prog.flush(err == nil); perr != nil && err == nil {
		err = perr
	}
	res.Units = int(r.unitsDone.Load())
	res.Rows, res.Bytes, res.Chunks = m.rows.Load(), m.bytes.Load(), m.chunks.Load()
	res.Regions = m.regionCount()
	res.Duration = time.Since(start)
	if err != nil {
		return res, err
	}
	m.done.Store(m.total.Load())
	log.Info("restored", "rows", res.Rows, "bytes", res.Bytes, "regions", res.Regions, "duration", res.Duration)
	return res, nil
}

// writtenError wraps err in a *WrittenError once the target was written to
// (prog started, by this run or an earlier one): how far the restore got
// and where its progress is. Before that, err is a refusal and stays as
// it is (the CLI then says that nothing was written).
func writtenError(err error, path string, plan *Plan, prog *progress) error {
	if err == nil || !prog.started() {
		return err
	}
	we := &WrittenError{Err: err, ProgressFile: path, Units: len(plan.Units), Finished: prog.finished()}
	for _, u := range plan.Units {
		if prog.isDone(u) {
			we.UnitsDone++
		}
	}
	return we
}

// filesLeft returns the work left: the plan's files that meet a unit not
// recorded done, in plan order, and how many units are done.
func filesLeft(plan *Plan, prog *progress) (files []FileRef, unitsDone int) {
	notDone := make([]int, len(plan.Units)+1) // prefix counts of units not done
	for i, u := range plan.Units {
		notDone[i+1] = notDone[i]
		if prog.isDone(u) {
			unitsDone++
		} else {
			notDone[i+1]++
		}
	}
	for _, f := range plan.Files {
		lo, hi := unitSpan(plan.Units, f.File.GetMinKey(), f.File.GetMaxKey())
		if lo <= hi && notDone[hi+1]-notDone[lo] > 0 {
			files = append(files, f)
		}
	}
	return files, unitsDone
}

// The write pipeline: readers sweep jobs (a few at once: each decodes and
// merges on one CPU), cutting chunks; writers (Concurrency of them) write
// and ingest chunks, any region, in parallel. Chunks come from a free list
// of Concurrency+readers buffers, which bounds their memory and makes
// readers wait for writers.
type runner struct {
	o          Options
	log        hclog.Logger
	plan       *Plan
	files      []FileRef
	tgt        writeTarget
	src        sources
	prog       *progress
	meter      *meter
	readers    int
	readBudget int64 // per reader: open iterators of one pass

	free      chan *chunk
	writes    chan writeReq
	unitsDone atomic.Int64
	// multiPass counts the sweeps that took several passes: not
	// checksummed.
	multiPass atomic.Int64
}

type writeReq struct {
	c   *chunk
	tr  *tracker
	seq int64
}

// WrittenError is a restore error after the target was written to (by
// this run or an earlier one with the same progress file): the target
// holds part of the restore, or all of it when Finished (then only setting
// GC back failed). Rerunning the same command resumes from ProgressFile.
type WrittenError struct {
	Err              error
	ProgressFile     string
	UnitsDone, Units int
	Finished         bool
}

func (e *WrittenError) Error() string { return e.Err.Error() }
func (e *WrittenError) Unwrap() error { return e.Err }

// readerCount returns how many readers (sweeping jobs, one CPU each) a restore
// of the given concurrency runs, and how many chunk buffers it holds.
func readerCount(concurrency int) (readers, chunks int) {
	readers = max(1, concurrency/4)
	return readers, concurrency + readers
}

// ReadBudget is the memory each reader may hold in open file iterators:
// what MemoryBudget leaves after the chunk buffers, shared by the readers.
// A chunk costs about three times its bytes: the arena, the protobuf
// messages built over it and their marshalled copies in flight.
func ReadBudget(concurrency int, memory, chunkBytes int64) int64 {
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}
	if chunkBytes <= 0 {
		chunkBytes = DefaultChunkBytes
	}
	r, n := readerCount(concurrency)
	return (memory - int64(n)*3*chunkBytes) / int64(r)
}

// MinReadBudget is the smallest per-reader budget CheckBudget accepts: a
// few files' iterators (two row groups each, 8 MiB of rows uncompressed).
// Below it a sweep takes one pass per file or two.
const MinReadBudget = 16 << 20

// CheckBudget reports, in one line, why a memory budget is too small for
// a concurrency (audit F8): the chunk buffers must leave each reader at
// least MinReadBudget. It names the smallest budget that fits.
func CheckBudget(concurrency int, memory int64) error {
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}
	r, n := readerCount(concurrency)
	chunks := int64(n) * 3 * DefaultChunkBytes
	if rb := ReadBudget(concurrency, memory, DefaultChunkBytes); rb < MinReadBudget {
		need := chunks + int64(r)*MinReadBudget
		return fmt.Errorf("too small for concurrency %d: its %d chunk buffers take %s and its %d readers need %s each; use at least %s, or a lower concurrency",
			concurrency, n, fmtMiB(chunks), r, fmtMiB(MinReadBudget), fmtMiB(need))
	}
	return nil
}

func fmtMiB(n int64) string { return fmt.Sprintf("%dMiB", n>>20) }

func newRunner(o Options, log hclog.Logger, plan *Plan, files []FileRef, tgt writeTarget, prog *progress, m *meter) *runner {
	readers, nChunks := readerCount(o.Concurrency)
	readBudget := ReadBudget(o.Concurrency, o.MemoryBudget, o.ChunkBytes)
	r := &runner{o: o, log: log, plan: plan, files: files, tgt: tgt, src: sources{log: o.Source, base: o.Snapshot}, prog: prog, meter: m,
		readers: readers, readBudget: readBudget,
		free: make(chan *chunk, nChunks), writes: make(chan writeReq)}
	for i := 0; i < nChunks; i++ {
		r.free <- &chunk{}
	}
	return r
}

// jobBytes is the estimated logical bytes of one job. A job boundary makes
// every file it crosses decode one row group twice (both jobs read it), so
// a job should hold several row groups' worth of every file: at least four
// times the sum over files of min(file, row group). Above that, the work is
// spread over twice the readers.
func jobBytes(files []FileRef, logical int64, readers int) int64 {
	var perBoundary int64
	for _, f := range files {
		perBoundary += min(f.File.GetLogicalBytes(), logfile.DefaultRowGroupBytes)
	}
	return max(4*perBoundary, logical/int64(2*readers), 16<<20)
}

func (r *runner) run(ctx context.Context, logical int64) error {
	jobs := splitJobs(r.plan.Units, r.files, jobBytes(r.files, logical, r.readers))
	g, gctx := errgroup.WithContext(ctx)
	var writers sync.WaitGroup
	for w := 0; w < r.o.Concurrency; w++ {
		writers.Add(1)
		g.Go(func() error {
			defer writers.Done()
			for req := range r.writes {
				if err := r.write(gctx, req); err != nil {
					return err
				}
			}
			return nil
		})
	}
	jobCh := make(chan job)
	g.Go(func() error {
		defer close(jobCh)
		for _, j := range jobs {
			select {
			case jobCh <- j:
			case <-gctx.Done():
				return nil
			}
		}
		return nil
	})
	var readers sync.WaitGroup
	for i := 0; i < r.readers; i++ {
		readers.Add(1)
		g.Go(func() error {
			defer readers.Done()
			for j := range jobCh {
				if err := r.job(gctx, j); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		readers.Wait()
		close(r.writes)
		return nil
	})
	return g.Wait()
}

// write writes one chunk, then hands its buffer back and tells its tracker.
func (r *runner) write(ctx context.Context, req writeReq) error {
	c := req.c
	err := r.tgt.writeChunk(ctx, c, func(regionID uint64, rows []kv) {
		var n int64
		for i := range rows {
			n += int64(rows[i].kLen + rows[i].vLen)
		}
		r.meter.wrote(regionID, int64(len(rows)), n)
		if r.o.hooks != nil && r.o.hooks.ingested != nil {
			r.o.hooks.ingested(c, rows)
		}
	})
	if err != nil {
		return err
	}
	c.reset()
	r.free <- c
	return req.tr.complete(req.seq)
}

// tracker records, for one sweep, which chunks are ingested, and marks a
// unit done once every chunk up to the one holding its last version is.
type tracker struct {
	r         *runner
	mu        sync.Mutex
	next      int64          // sequence number of the next chunk
	done      map[int64]bool // ingested, above the watermark
	watermark int64          // every chunk below it is ingested
	pending   []pendingUnit
	moved     chan struct{} // closed (and replaced) when the watermark moves
}

type pendingUnit struct {
	seq int64
	u   keyspace.Range
}

func newTracker(r *runner) *tracker {
	return &tracker{r: r, done: map[int64]bool{}, moved: make(chan struct{})}
}

// drained waits until every chunk given a sequence number is ingested.
func (t *tracker) drained(ctx context.Context) error {
	for {
		t.mu.Lock()
		if t.watermark >= t.next {
			t.mu.Unlock()
			return nil
		}
		ch := t.moved
		t.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// seq assigns the next chunk's sequence number.
func (t *tracker) seq() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	return t.next - 1
}

// attach makes u done once chunk seq (and every earlier one) is ingested;
// seq < 0: no chunk holds any of its versions.
func (t *tracker) attach(u keyspace.Range, seq int64) error {
	t.mu.Lock()
	t.pending = append(t.pending, pendingUnit{seq: seq, u: u})
	t.mu.Unlock()
	return t.release()
}

func (t *tracker) complete(seq int64) error {
	t.mu.Lock()
	t.done[seq] = true
	moved := false
	for t.done[t.watermark] {
		delete(t.done, t.watermark)
		t.watermark++
		moved = true
	}
	if moved {
		close(t.moved)
		t.moved = make(chan struct{})
	}
	t.mu.Unlock()
	return t.release()
}

// release marks the pending units whose chunks are all ingested.
func (t *tracker) release() error {
	t.mu.Lock()
	var ready []keyspace.Range
	keep := t.pending[:0]
	for _, p := range t.pending {
		if p.seq < t.watermark {
			ready = append(ready, p.u)
		} else {
			keep = append(keep, p)
		}
	}
	t.pending = keep
	t.mu.Unlock()
	if len(ready) == 0 {
		return nil
	}
	if err := t.r.prog.markDone(ready...); err != nil {
		return err
	}
	t.r.unitsDone.Add(int64(len(ready)))
	if h := t.r.o.hooks; h != nil && h.unitsDone != nil {
		h.unitsDone(ready)
	}
	return nil
}

// job restores the units of j that are not done yet, one sweep per run of
// consecutive such units.
func (r *runner) job(ctx context.Context, j job) error {
	for u := j.first; u < j.last; {
		if r.prog.isDone(r.plan.Units[u]) {
			u++
			continue
		}
		v := u + 1
		for v < j.last && !r.prog.isDone(r.plan.Units[v]) {
			v++
		}
		if err := r.sweep(ctx, u, v); err != nil {
			return err
		}
		u = v
	}
	return nil
}

// sweep restores units [u, v), which are adjacent. When the iterators of
// the files that meet them fit the memory budget together, it reads each
// file once, in one pass. Otherwise it takes several passes, each over a
// window (lo, hi] of commit timestamps, in ascending order: a pass reads
// the files whose commit range meets its window and ingests only the
// versions inside it, and the next pass starts only after every chunk of
// this one is ingested. So no version of a key is ever ingested after a
// newer one, and any GC on the target sees a prefix of each key's history
// (audit F1: a Delete collected before an older Put arrives would bring
// the key back). A file whose commit range spans several windows is read
// once per window. The units count as done only after the last pass.
func (r *runner) sweep(ctx context.Context, u, v int) error {
	units, T := r.plan.Units, r.plan.RestoreTS
	rng := keyspace.Range{Start: units[u].Start, End: units[v-1].End}
	var fs []FileRef
	for _, f := range r.files {
		if overlapsClosed(rng, f.File.GetMinKey(), f.File.GetMaxKey()) {
			fs = append(fs, f)
		}
	}
	// By min_commit_ts; the path keeps the order stable.
	slices.SortStableFunc(fs, func(a, b FileRef) int {
		return cmp.Compare(a.File.GetMinCommitTs(), b.File.GetMinCommitTs())
	})
	maxTS := func(f FileRef) uint64 { // unknown statistics: assume it reaches T
		if m := f.File.GetMaxCommitTs(); m >= f.File.GetMinCommitTs() && m != 0 {
			return m
		}
		return T
	}
	type open struct {
		f    FileRef
		rd   *logfile.Reader
		need int64
	}
	tr := newTracker(r)
	var carried []open // opened in an earlier pass, with versions above lo
	next := 0          // fs[next:] were never opened
	var lo uint64      // the window of this pass is (lo, hi]
	var held *open     // fs[next], opened, but it did not fit the last pass
	warned := false    // about a pass over the budget
	var sum *checksum.Sum
	for pass := 0; ; pass++ {
		set := carried
		var mem int64
		for _, o := range set {
			mem += o.need
		}
		for next < len(fs) {
			f := fs[next]
			var rd *logfile.Reader
			if held != nil {
				rd, held = held.rd, nil
			} else {
				var err error
				if rd, err = openFile(ctx, r.src.of(f), f); err != nil {
					return err
				}
			}
			need := iterMemory(rd, f.File.GetSize())
			// A file whose versions may start right after lo must be in
			// this pass, whatever the budget: the window cannot be empty.
			if len(set) > 0 && mem+need > r.readBudget && f.File.GetMinCommitTs() > lo+1 {
				held = &open{f: f, rd: rd, need: need}
				break
			}
			if len(set) > 0 && mem+need > r.readBudget && !warned {
				warned = true
				r.log.Warn("files overlapping one commit timestamp exceed the read budget; reading them together",
					"range", rng.String(), "files", len(set)+1, "bytes", mem+need, "budget", r.readBudget)
			}
			set = append(set, open{f: f, rd: rd, need: need})
			mem += need
			next++
		}
		hi := T
		if next < len(fs) {
			hi = min(T, fs[next].File.GetMinCommitTs()-1)
		}
		last := hi == T
		if pass > 0 || !last {
			r.log.Debug("multi-pass sweep", "range", rng.String(), "pass", pass, "files", len(set), "from_ts", lo, "to_ts", hi)
		}
		its := make([]logfile.Iterator, 0, len(set))
		for _, o := range set {
			it := &fileIter{Iterator: o.rd.Iter(rng.Start, rng.End), f: o.f}
			if r.plan.Base != nil && !o.f.Base {
				it.floor = r.plan.LogFrom
			}
			its = append(its, it)
		}
		if pass == 0 && last && !r.o.SkipChecksum {
			sum = &checksum.Sum{}
		}
		if err := r.pass(ctx, merge.Merge(its...), u, v, lo, hi, last, tr, sum); err != nil {
			return err
		}
		if last {
			if sum == nil {
				r.multiPass.Add(1)
				return nil
			}
			return r.prog.recordSum(rng, *sum)
		}
		// Every version up to hi is ingested before any newer one is.
		if err := tr.drained(ctx); err != nil {
			return err
		}
		carried = carried[:0:0]
		for _, o := range set {
			if maxTS(o.f) > hi {
				carried = append(carried, o)
			}
		}
		lo = hi
	}
}

func closeAll(its []logfile.Iterator) {
	for _, it := range its {
		_ = it.Close()
	}
}

// fileIter names the file in its errors. Over a base, it drops a log
// file's rows at or before floor (the base's backup ts): the base holds
// what a read at B returns, and a log version at or before B may be
// shadowed by a newer one the pruning removed (a Put re-captured in a
// later file whose Delete, also before B, is in a pruned file would
// otherwise come back).
type fileIter struct {
	logfile.Iterator
	f     FileRef
	floor uint64
}

func (it *fileIter) Next() bool {
	for it.Iterator.Next() {
		if it.floor == 0 || it.Iterator.Row().CommitTS > it.floor {
			return true
		}
	}
	return false
}

func (it *fileIter) Err() error {
	if err := it.Iterator.Err(); err != nil {
		return dataError(it.f, err)
	}
	return nil
}

// pass cuts the versions of it with commit_ts in (lo, hi] into chunks of
// about ChunkBytes inside one target region, and hands them to the
// writers. A chunk is cut only between two keys, never between versions of
// one key, so each key's versions of the pass are ingested at once (a chunk
// can grow past ChunkBytes by one key's versions). When last, each unit is
// attached to the chunk holding its last version. When sum is set (a
// single pass over (0, T]), it receives the checksum of what a read at T
// returns from units [u, v): per key its newest version, if a Put, for the
// keys checksum.InBounds counts.
func (r *runner) pass(ctx context.Context, it logfile.Iterator, u, v int, lo, hi uint64, last bool, tr *tracker, sum *checksum.Sum) (err error) {
	defer func() {
		if cerr := it.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	units := r.plan.Units
	var c *chunk
	var seq int64
	var reg *region
	submit := func() error {
		if c == nil || len(c.rows) == 0 {
			return nil
		}
		select {
		case r.writes <- writeReq{c: c, tr: tr, seq: seq}:
			c = nil
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// lastSeq is the chunk holding the versions read so far: the current
	// one if it has any, else the last submitted (-1: none).
	lastSeq := func() int64 {
		if c != nil && len(c.rows) > 0 {
			return seq
		}
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.next - 1
	}
	defer func() {
		if c != nil {
			c.reset()
			r.free <- c
		}
	}()
	cu := u
	rng := keyspace.Range{Start: units[u].Start, End: units[v-1].End}
	var sumKey []byte // the key whose visible version is counted
	sumStarted := false
	for it.Next() {
		row := it.Row()
		if sum != nil && row.CommitTS <= hi && len(row.Key) > 0 && (!sumStarted || !bytes.Equal(row.Key, sumKey)) {
			sumKey, sumStarted = append(sumKey[:0], row.Key...), true
			if row.Op == logfile.OpPut && checksum.InBounds(rng, row.Key) {
				sum.Add(row.Key, row.Value)
			}
		}
		r.meter.done.Add(row.LogicalSize())
		for cu < v-1 && !keyspace.BeforeEnd(row.Key, units[cu].End) {
			if last {
				if err := tr.attach(units[cu], lastSeq()); err != nil {
					return err
				}
			}
			cu++
		}
		if row.CommitTS <= lo || row.CommitTS > hi || len(row.Key) == 0 {
			continue
		}
		if c == nil || !reg.contains(row.Key) || (c.bytes >= r.o.ChunkBytes && !bytes.Equal(c.key(&c.rows[len(c.rows)-1]), row.Key)) {
			if err := submit(); err != nil {
				return err
			}
			if reg, err = r.tgt.locateRetry(ctx, row.Key); err != nil {
				return err
			}
			select {
			case c = <-r.free:
			case <-ctx.Done():
				return ctx.Err()
			}
			if cap(c.arena) == 0 { // first use: size it once
				c.arena = make([]byte, 0, r.o.ChunkBytes+64<<10)
				c.rows = make([]kv, 0, r.o.ChunkBytes/128)
			}
			seq = tr.seq()
		}
		c.add(row)
	}
	if err := it.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := submit(); err != nil {
		return err
	}
	if last {
		for ; cu < v; cu++ {
			if err := tr.attach(units[cu], lastSeq()); err != nil {
				return err
			}
		}
	}
	return nil
}
