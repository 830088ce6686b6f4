package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tikv/client-go/v2/tikv"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// Errors of a backup, for callers that map them to exit statuses.
var (
	// ErrConflict: the root holds another backup (or a finished one), the
	// backup ts is below the GC safepoint or in the future, or GC passed
	// an unfinished backup's ts. Nothing was written.
	ErrConflict = errors.New("snapshot conflict")
	// ErrChecksum: a range's data does not match the cluster's own checksum
	// of it at the backup ts; the backup is not committed.
	ErrChecksum = errors.New("snapshot checksum mismatch")
	// ErrInvalid: bad options.
	ErrInvalid = errors.New("invalid snapshot request")
)

// Defaults of Options.
const (
	DefaultConcurrency  = 4
	DefaultRangeRegions = 8
	// DefaultSafePointTTL is the TTL of the backup's service GC safepoint,
	// refreshed every third of it: a backup killed with -9 holds GC back
	// for at most this long (BR's --gcttl default is 5 min).
	DefaultSafePointTTL = 5 * time.Minute
	rangeAttempts       = 4
)

// Cluster is what a backup needs of PD (connector's PD client has it).
type Cluster = task.PD

// Agents hands a range to the agent beside a store.
type Agents interface {
	// BackupRange asks the agent of storeID to scan and store a range;
	// ok is false when no agent serves that store.
	BackupRange(ctx context.Context, storeID uint64, req *pitrpb.BackupRangeRequest) (resp *pitrpb.BackupRangeResponse, ok bool, err error)
}

// Options configure a snapshot backup.
type Options struct {
	// Storage is the backup's storage: a task root (the snapshot goes to
	// snapshot/<ts>/ under it) or a root of its own.
	Storage storage.Storage
	// StorageURL is what agents open (with their own credentials).
	StorageURL string
	PD         Cluster
	KV         *tikv.KVStore
	// BackupTS is the backup ts (0: now, or the unfinished backup's).
	BackupTS uint64
	// Ranges to back up (none: the task's ranges, or every key).
	Ranges []keyspace.Range
	// Concurrency bounds the ranges scanned at once (DefaultConcurrency).
	Concurrency int
	// RangeRegions bounds the regions of one range, the grain of
	// progress and checksums (DefaultRangeRegions).
	RangeRegions int
	FileTarget   int64
	// RateLimit is the agents' upload rate limit in bytes/s (0: none); the
	// command's own uploads are limited through Storage.
	RateLimit    int64
	SafePointTTL time.Duration
	// LeaseTTL is the TTL of the root's lease (DefaultLeaseTTL): a backup
	// killed with -9 can be resumed that long after it died.
	LeaseTTL time.Duration
	// Agents, when set, scan the ranges their stores lead.
	Agents Agents
	// Progress, when set, receives a progress line every second.
	Progress io.Writer
	Logger   hclog.Logger

	// afterRange, in tests, runs after each range is recorded.
	afterRange func(r keyspace.Range)
}

// Result describes a finished backup.
type Result struct {
	Root          string
	BackupTS      uint64
	Resumed       bool
	Ranges        int // ranges in the backupmeta
	RangesSkipped int // finished by an earlier run
	ByAgents      int // ranges this run's agents scanned
	Files         int
	Bytes         int64 // stored
	Kvs           uint64
	LogicalBytes  uint64
	Duration      time.Duration
}

// SafePointID is the service GC safepoint a backup at ts holds.
func SafePointID(ts uint64) string { return fmt.Sprintf("pitr-backup-%016x", ts) }

// Run takes (or resumes) a snapshot backup:
//
//  1. pick the root and the backup ts: an unfinished backup there is
//     resumed (same ts and ranges), a finished one or a different one is
//     ErrConflict; the ts must be at or above PD's GC safepoint and not in
//     the future;
//  2. take the root's lease (renewed; a live holder is ErrConflict), then
//     hold a service GC safepoint at the ts (refreshed; released on every
//     return; a killed backup's expires with its TTL);
//  3. claim the root (backup.lock, create-if-absent);
//  4. split what is left to do at the current regions into ranges of at
//     most RangeRegions regions with one leader store, and scan each where
//     its leader is (the store's agent, else this process), retrying a
//     range on any error; each range's checksum is compared with the
//     cluster's (ErrChecksum) and the range recorded in progress/;
//  5. write backupmeta, the commit point.
func Run(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	o.setDefaults()
	log := o.Logger.Named("backup")
	taskInfo, err := readTask(ctx, o.Storage)
	if err != nil {
		return nil, err
	}
	clusterID := o.PD.GetClusterID(ctx)
	if taskInfo != nil && taskInfo.GetClusterId() != 0 && taskInfo.GetClusterId() != clusterID {
		return nil, fmt.Errorf("%w: the storage root belongs to task %q of cluster %d, not to this cluster (%d)", ErrConflict, taskInfo.GetName(), taskInfo.GetClusterId(), clusterID)
	}
	ranges := keyspace.Normalize(o.Ranges) // none: every key
	if len(o.Ranges) == 0 && taskInfo != nil {
		ranges = keyspace.Normalize(fromPB(taskInfo.GetRanges()))
	}
	if len(ranges) == 0 {
		return nil, fmt.Errorf("%w: the ranges are empty", ErrInvalid)
	}
	root, ts, resumed, err := pickRoot(ctx, o.Storage, taskInfo != nil, o.BackupTS, ranges)
	if err != nil {
		return nil, err
	}
	nowTS, err := connector.GetTS(ctx, o.PD)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", connector.ErrUnavailable, err)
	}
	if ts == 0 {
		ts = nowTS
		root = TaskRoot(ts)
		if taskInfo == nil {
			root = ""
		}
	}
	if ts > nowTS {
		return nil, fmt.Errorf("%w: backup ts %s is in the future (PD's ts is %s)", ErrConflict, keyspace.Format(ts), keyspace.Format(nowTS))
	}
	if taskInfo != nil && ts < taskInfo.GetStartTs() {
		log.Warn("the backup ts is before the task's start ts: a restore does not use this snapshot", "backup_ts", ts, "task_start_ts", taskInfo.GetStartTs())
	}
	// The lease first: a process refused here must not touch the GC
	// safepoint of the one that holds it (same id).
	ls, err := takeLease(ctx, o.Storage, root, o.LeaseTTL, log)
	if err != nil {
		return nil, err
	}
	defer ls.Release()
	hold, err := holdGC(ctx, o.PD, ts, o.SafePointTTL, log)
	if err != nil {
		return nil, err
	}
	defer hold.release()

	host, _ := os.Hostname()
	lock := &pitrpb.SnapshotLock{BackupTs: ts, Ranges: toPB(ranges), ClusterId: clusterID, CreatedUnixMs: time.Now().UnixMilli(),
		CreatedBy: fmt.Sprintf("%s/%d", host, os.Getpid()), Task: taskInfo.GetName()}
	if err := claim(ctx, o.Storage, root, lock); err != nil {
		return nil, err
	}

	done, err := readDone(ctx, o.Storage, root, ts)
	if err != nil {
		return nil, err
	}
	res := &Result{Root: root, BackupTS: ts, Resumed: resumed || len(done) > 0, RangesSkipped: len(done)}
	log.Info("backup", "root", o.Storage.URL()+"/"+root, "backup_ts", ts, "ranges", len(ranges), "resumed", res.Resumed, "ranges_done", len(done))

	b := &backup{o: o, log: log, root: root, ts: ts, hold: hold, lease: ls}
	todo := subtract(ranges, doneRanges(done))
	if err := b.scanAll(ctx, todo, res); err != nil {
		return nil, err
	}
	done, err = readDone(ctx, o.Storage, root, ts)
	if err != nil {
		return nil, err
	}
	meta, err := buildMeta(ts, clusterID, taskInfo.GetName(), ranges, done, start)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(hold.err(), ls.Err()); err != nil {
		return nil, err
	}
	mb, err := logfile.EncodeBackupMeta(meta)
	if err != nil {
		return nil, err
	}
	if err := o.Storage.CreateIfAbsent(ctx, root+MetaName, mb); err != nil {
		return nil, fmt.Errorf("write %s%s: %w", root, MetaName, err)
	}
	res.Ranges, res.Files = len(meta.GetChecksums()), len(meta.GetFiles())
	for _, f := range meta.GetFiles() {
		res.Bytes += f.GetSize()
	}
	res.Kvs, res.LogicalBytes = meta.GetTotalKvs(), meta.GetTotalBytes()
	res.Duration = time.Since(start)
	log.Info("backup finished", "backup_ts", ts, "files", res.Files, "bytes", res.Bytes, "kvs", res.Kvs, "duration", res.Duration)
	return res, nil
}

func (o *Options) setDefaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.RangeRegions <= 0 {
		o.RangeRegions = DefaultRangeRegions
	}
	if o.FileTarget <= 0 {
		o.FileTarget = DefaultFileTarget
	}
	if o.SafePointTTL <= 0 {
		o.SafePointTTL = DefaultSafePointTTL
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
}

// readTask reads task.pb when st is a task root (nil otherwise).
func readTask(ctx context.Context, st storage.Storage) (*pitrpb.TaskInfo, error) {
	b, err := st.Get(ctx, logfile.TaskPath)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", connector.ErrUnavailable, logfile.TaskPath, err)
	}
	ti, err := logfile.DecodeTaskInfo(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", logfile.TaskPath, err)
	}
	return ti, nil
}

// pickRoot finds where the backup goes and whether it resumes one. ts 0
// with resumed false means "a new backup at the current ts".
func pickRoot(ctx context.Context, st storage.Storage, taskRoot bool, want uint64, ranges []keyspace.Range) (root string, ts uint64, resumed bool, err error) {
	same := func(l *pitrpb.SnapshotLock) bool {
		return slices.EqualFunc(keyspace.Normalize(fromPB(l.GetRanges())), ranges, func(a, b keyspace.Range) bool {
			return bytes.Equal(a.Start, b.Start) && bytes.Equal(a.End, b.End)
		})
	}
	if !taskRoot {
		info, err := Load(ctx, st, "")
		switch {
		case errors.Is(err, ErrNoSnapshot):
			return "", want, false, nil
		case err != nil:
			return "", 0, false, err
		case info.Finished():
			return "", 0, false, fmt.Errorf("%w: %s already holds a finished snapshot at %s; back up into another root", ErrConflict, st.URL(), keyspace.Format(info.BackupTS))
		case want != 0 && want != info.BackupTS, !same(info.Lock):
			return "", 0, false, fmt.Errorf("%w: %s holds an unfinished backup at %s of other ranges or ts (%s); rerun it with the same --ts and --range to resume it, or back up into another root",
				ErrConflict, st.URL(), keyspace.Format(info.BackupTS), info.Lock.GetCreatedBy())
		}
		return "", info.BackupTS, true, nil
	}
	if want != 0 {
		root = TaskRoot(want)
		info, err := Load(ctx, st, root)
		switch {
		case errors.Is(err, ErrNoSnapshot):
			return root, want, false, nil
		case err != nil:
			return "", 0, false, err
		case info.Finished():
			return "", 0, false, fmt.Errorf("%w: a finished snapshot at %s exists (%s)", ErrConflict, keyspace.Format(want), root)
		case !same(info.Lock):
			return "", 0, false, fmt.Errorf("%w: the unfinished backup at %s (%s) is of other ranges; rerun it with the same --range to resume it", ErrConflict, keyspace.Format(want), root)
		}
		return root, want, true, nil
	}
	all, err := List(ctx, st)
	if err != nil {
		return "", 0, false, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if info := all[i]; !info.Finished() && info.Lock != nil && same(info.Lock) {
			return info.Root, info.BackupTS, true, nil
		}
	}
	return "", 0, false, nil
}

// claim creates backup.lock, or checks that the one there is this backup's.
func claim(ctx context.Context, st storage.Storage, root string, lock *pitrpb.SnapshotLock) error {
	b, err := logfile.EncodeSnapshotLock(lock)
	if err != nil {
		return err
	}
	err = st.CreateIfAbsent(ctx, root+LockName, b)
	if err == nil {
		return nil
	}
	if !errors.Is(err, storage.ErrAlreadyExists) {
		return fmt.Errorf("%w: create %s%s: %v", connector.ErrUnavailable, root, LockName, err)
	}
	cur, err := st.Get(ctx, root+LockName)
	if err != nil {
		return fmt.Errorf("read %s%s: %w", root, LockName, err)
	}
	have, err := logfile.DecodeSnapshotLock(cur)
	if err != nil {
		return fmt.Errorf("%s%s: %w", root, LockName, err)
	}
	if have.GetBackupTs() != lock.GetBackupTs() || have.GetClusterId() != lock.GetClusterId() {
		return fmt.Errorf("%w: %s%s belongs to a backup at %s of cluster %d (%s)", ErrConflict, root, LockName,
			keyspace.Format(have.GetBackupTs()), have.GetClusterId(), have.GetCreatedBy())
	}
	return nil
}

// readDone reads the finished ranges recorded under root.
func readDone(ctx context.Context, st storage.Storage, root string, ts uint64) ([]*pitrpb.SnapshotRange, error) {
	var keys []string
	if err := st.List(ctx, root+RangePrefix, func(o storage.ObjectInfo) error {
		if strings.HasSuffix(o.Key, ".range") {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("%w: list %s%s: %v", connector.ErrUnavailable, root, RangePrefix, err)
	}
	out := make([]*pitrpb.SnapshotRange, 0, len(keys))
	for _, k := range keys {
		b, err := st.Get(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		r, err := logfile.DecodeSnapshotRange(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if r.GetBackupTs() != ts {
			return nil, fmt.Errorf("%w: %s is of backup ts %d, not %d", logfile.ErrCorrupt, k, r.GetBackupTs(), ts)
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *pitrpb.SnapshotRange) int {
		return bytes.Compare(a.GetRange().GetStartKey(), b.GetRange().GetStartKey())
	})
	return out, nil
}

func doneRanges(done []*pitrpb.SnapshotRange) []keyspace.Range {
	out := make([]keyspace.Range, 0, len(done))
	for _, d := range done {
		out = append(out, keyspace.Range{Start: d.GetRange().GetStartKey(), End: d.GetRange().GetEndKey()})
	}
	return out
}

// subtract returns the parts of ranges (sorted, merged) outside done.
func subtract(ranges, done []keyspace.Range) []keyspace.Range {
	done = keyspace.Merge(done)
	var out []keyspace.Range
	for _, r := range ranges {
		cur := r
		empty := false
		for _, d := range done {
			if empty {
				break
			}
			if !overlaps(cur, d) {
				continue
			}
			if bytes.Compare(d.Start, cur.Start) > 0 {
				out = append(out, keyspace.Range{Start: cur.Start, End: d.Start})
			}
			if len(d.End) == 0 || (len(cur.End) > 0 && bytes.Compare(d.End, cur.End) >= 0) {
				empty = true
				continue
			}
			cur.Start = d.End
		}
		if !empty {
			out = append(out, cur)
		}
	}
	return out
}

func overlaps(a, b keyspace.Range) bool {
	return keyspace.BeforeEnd(a.Start, b.End) && keyspace.BeforeEnd(b.Start, a.End)
}

// buildMeta checks that the finished ranges tile the ranges and sums them
// up.
func buildMeta(ts, clusterID uint64, taskName string, ranges []keyspace.Range, done []*pitrpb.SnapshotRange, start time.Time) (*pitrpb.BackupMeta, error) {
	if err := tiles(doneRanges(done), ranges); err != nil {
		return nil, fmt.Errorf("the finished ranges do not cover the backup exactly: %v", err)
	}
	m := &pitrpb.BackupMeta{BackupTs: ts, ClusterId: clusterID, Task: taskName, Ranges: toPB(ranges),
		StartedUnixMs: start.UnixMilli(), FinishedUnixMs: time.Now().UnixMilli()}
	for _, d := range done {
		m.Files = append(m.Files, d.GetFiles()...)
		m.Checksums = append(m.Checksums, d.GetChecksum())
		m.TotalKvs += d.GetChecksum().GetTotalKvs()
		m.TotalBytes += d.GetChecksum().GetTotalBytes()
	}
	slices.SortFunc(m.Files, func(a, b *pitrpb.DataFile) int { return strings.Compare(a.GetPath(), b.GetPath()) })
	return m, nil
}

// backup is one run's scanning state.
type backup struct {
	o     Options
	log   hclog.Logger
	root  string
	ts    uint64
	hold  *gcHold
	lease *Lease

	scanned atomic.Int64 // logical bytes scanned by this process
	stored  atomic.Int64 // bytes stored, by anyone
	rangesN atomic.Int64
	agentsN atomic.Int64
}

// job is one range to back up and the store leading its first region.
type job struct {
	r      keyspace.Range
	leader uint64
}

// scanAll backs up the ranges todo, Concurrency at a time.
func (b *backup) scanAll(ctx context.Context, todo []keyspace.Range, res *Result) error {
	if len(todo) == 0 {
		return nil
	}
	jobs, err := b.split(ctx, todo)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopDraw := b.draw(ctx, len(jobs))
	defer stopDraw()
	queue := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	var firstErr error
	for range min(b.o.Concurrency, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range queue {
				if err := b.backupRange(ctx, j); err != nil {
					mu.Lock()
					failed = append(failed, j.r.String())
					if firstErr == nil || errors.Is(err, ErrChecksum) {
						firstErr = err
					}
					mu.Unlock()
					if errors.Is(err, ErrChecksum) || errors.Is(err, ErrConflict) {
						cancel(err)
					}
				}
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case queue <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(queue)
	wg.Wait()
	res.ByAgents = int(b.agentsN.Load())
	if firstErr != nil {
		slices.Sort(failed)
		if len(failed) > 8 {
			failed = append(failed[:8], fmt.Sprintf("and %d more", len(failed)-8))
		}
		return fmt.Errorf("%w (ranges not backed up: %s; rerun the same command to resume)", firstErr, strings.Join(failed, ", "))
	}
	return context.Cause(ctx)
}

// split cuts the ranges at the current regions into jobs of at most
// RangeRegions regions with the same leader store.
func (b *backup) split(ctx context.Context, todo []keyspace.Range) ([]job, error) {
	var jobs []job
	for _, r := range todo {
		bo := tikv.NewBackoffer(ctx, 20000)
		end := r.End
		regions, err := b.o.KV.GetRegionCache().LoadRegionsInKeyRange(bo, r.Start, end)
		if err != nil {
			return nil, fmt.Errorf("%w: regions of %s from PD: %v", connector.ErrUnavailable, r, err)
		}
		var cur *job
		n := 0
		for _, reg := range regions {
			s, e := reg.StartKey(), reg.EndKey()
			if bytes.Compare(s, r.Start) < 0 {
				s = r.Start
			}
			if len(e) == 0 || (len(r.End) > 0 && bytes.Compare(e, r.End) > 0) {
				e = r.End
			}
			leader := reg.GetLeaderStoreID()
			if peers := reg.GetMeta().GetPeers(); leader == 0 && len(peers) > 0 {
				// PD does not know the leader yet (a fresh split, a PD
				// restart): a peer's agent scans it, its reads go to the
				// leader wherever it is.
				leader = peers[0].GetStoreId()
			}
			if cur != nil && (cur.leader != leader || n >= b.o.RangeRegions) {
				jobs = append(jobs, *cur)
				cur = nil
			}
			if cur == nil {
				cur, n = &job{r: keyspace.Range{Start: bytes.Clone(s), End: bytes.Clone(e)}, leader: leader}, 0
			}
			cur.r.End = bytes.Clone(e)
			n++
			if len(e) == 0 {
				break
			}
		}
		if cur == nil { // no region answered: one job, scanned by this process
			cur = &job{r: r}
		}
		cur.r.End = r.End
		jobs = append(jobs, *cur)
	}
	return jobs, nil
}

// backupRange scans one range (its store's agent, or this process),
// compares its checksum with the cluster's, and records it. Any failure
// is retried with backoff, up to rangeAttempts times.
func (b *backup) backupRange(ctx context.Context, j job) error {
	var err error
	backoff := 500 * time.Millisecond
	for attempt := 1; attempt <= rangeAttempts; attempt++ {
		if attempt > 1 {
			b.log.Warn("range failed; retrying", "range", j.r.String(), "attempt", attempt, "error", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			backoff *= 2
		}
		if err = errors.Join(b.hold.err(), b.lease.Err()); err != nil {
			return err
		}
		err = b.tryRange(ctx, j, attempt)
		if err == nil || errors.Is(err, ErrChecksum) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (b *backup) tryRange(ctx context.Context, j job, attempt int) error {
	// TiKV's checksum of the range at the backup ts is a read of its own:
	// it runs while the range is scanned.
	type answer struct {
		sum checksum.Sum
		err error
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	theirs := make(chan answer, 1)
	go func() {
		s, err := checksum.Cluster(cctx, b.o.KV, checksum.Bounded(j.r), b.ts)
		theirs <- answer{s, err}
	}()
	files, sum, by, err := b.scan(ctx, j, attempt)
	if err != nil {
		return err
	}
	a := <-theirs
	got, err := a.sum, a.err
	if err != nil {
		return fmt.Errorf("checksum of %s from the cluster: %w", j.r, err)
	}
	if got != sum {
		return fmt.Errorf("%w: range %s at %s: the backup holds %v, the cluster's own checksum is %v",
			ErrChecksum, j.r, keyspace.Format(b.ts), sum, got)
	}
	rec := &pitrpb.SnapshotRange{BackupTs: b.ts, Range: &pitrpb.KeyRange{StartKey: j.r.Start, EndKey: j.r.End}, Files: files,
		Checksum:       &pitrpb.RangeChecksum{Range: &pitrpb.KeyRange{StartKey: j.r.Start, EndKey: j.r.End}, Crc64Xor: sum.Crc64Xor, TotalKvs: sum.TotalKvs, TotalBytes: sum.TotalBytes},
		ScannedByStore: by, FinishedUnixMs: time.Now().UnixMilli()}
	rb, err := logfile.EncodeSnapshotRange(rec)
	if err != nil {
		return err
	}
	if err := b.o.Storage.Put(ctx, b.root+RangePath(j.r.Start), rb); err != nil {
		return fmt.Errorf("record %s: %w", j.r, err)
	}
	for _, f := range files {
		b.stored.Add(f.GetSize())
	}
	b.rangesN.Add(1)
	if by != 0 {
		b.agentsN.Add(1)
	}
	if b.o.afterRange != nil {
		b.o.afterRange(j.r)
	}
	return nil
}

// scan has the range scanned: by its leader store's agent on the first
// attempts, by this process when no agent serves the store, when the
// agent fails, or on the last attempt.
func (b *backup) scan(ctx context.Context, j job, attempt int) ([]*pitrpb.DataFile, checksum.Sum, uint64, error) {
	if b.o.Agents != nil && j.leader != 0 && attempt < rangeAttempts {
		resp, ok, err := b.o.Agents.BackupRange(ctx, j.leader, &pitrpb.BackupRangeRequest{
			StorageUrl: b.o.StorageURL, Root: b.root, BackupTs: b.ts,
			Range: &pitrpb.KeyRange{StartKey: j.r.Start, EndKey: j.r.End}, FileTarget: b.o.FileTarget, RateLimit: b.o.RateLimit,
		})
		if ok {
			if err != nil {
				return nil, checksum.Sum{}, 0, fmt.Errorf("agent of store %d: %w", j.leader, err)
			}
			c := resp.GetChecksum()
			return resp.GetFiles(), checksum.Sum{Crc64Xor: c.GetCrc64Xor(), TotalKvs: c.GetTotalKvs(), TotalBytes: c.GetTotalBytes()}, resp.GetStoreId(), nil
		}
	}
	s, err := ScanRange(ctx, b.o.KV, b.o.Storage, ScanOptions{Root: b.root, BackupTS: b.ts, Range: j.r, FileTarget: b.o.FileTarget, Scanned: &b.scanned})
	if err != nil {
		return nil, checksum.Sum{}, 0, err
	}
	return s.Files, s.Sum, 0, nil
}

// draw writes a progress line every second until stopped.
func (b *backup) draw(ctx context.Context, total int) (stop func()) {
	if b.o.Progress == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	started := time.Now()
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		line := func() {
			done := b.rangesN.Load()
			el := time.Since(started)
			stored := b.stored.Load()
			rate := float64(stored) / max(el.Seconds(), 0.001)
			eta := "?"
			if done > 0 {
				eta = (time.Duration(float64(el) * float64(int64(total)-done) / float64(done))).Round(time.Second).String()
			}
			fmt.Fprintf(b.o.Progress, "backup %d/%d ranges  %s stored  %s/s  ETA %s\n", done, total, storage.FormatBytes(stored), storage.FormatBytes(int64(rate)), eta)
		}
		for {
			select {
			case <-t.C:
				line()
			case <-ctx.Done():
				line()
				return
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}
