package coordinator

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/txnkv/txnlock"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/task"
)

// Lock resolution (DESIGN I10, audit R2). TiKV never resolves a lock by
// itself: a region's resolved ts is min(oldest tracked lock's start_ts,
// min_ts) (tikv components/cdc/src/delegate.rs on_min_ts), so the lock of a
// client that died between prewrite and commit, on a key nobody reads again,
// pins that region's resolved ts, and with it the task's checkpoint, for
// good. GC would resolve it, but pitr holds the GC safepoint at the
// checkpoint, below the lock. BR's log-backup advancer
// (tidb br/pkg/streamhelper/advancer.go asyncResolveLocksForRanges) and
// TiCDC (tiflow cdc/kv/shared_client.go resolveLock, at most every 10 s per
// region) resolve locks on lagging ranges for this reason; so does the
// elected coordinator here, on every range Compute finds lagging.

// LockResolver resolves the locks of finished and dead transactions in a
// raw key range.
type LockResolver interface {
	// ResolveLocks scans the locks with start_ts ≤ maxVersion in r and
	// resolves those whose transaction committed, rolled back or expired;
	// the locks of live transactions stay.
	ResolveLocks(ctx context.Context, r keyspace.Range, maxVersion uint64) (LockScan, error)
}

// LockScan is what one ResolveLocks call found.
type LockScan struct {
	// Regions is how many regions were scanned; Locks how many locks with
	// start_ts ≤ maxVersion they held.
	Regions, Locks int
	// LiveMs > 0: some of the locks belong to live transactions (TTL not
	// expired) and were left alone; the longest of them expires in about
	// this many ms.
	LiveMs int64
}

// NewLockResolver resolves locks through client-go's lock resolver on
// store (a txnkv.Client's KVStore).
//
// It runs tikv.ResolveLocksForRange, the range walk GC and BR use (ScanLock
// per region, tikv.GCScanLockLimit locks at a time, GC's backoffer), but
// resolves each region's locks the way a reader does,
// txnlock.LockResolver.ResolveLocks with caller start ts 0, not GC's
// BatchResolveLocks: for each lock it asks the transaction's primary
// (CheckTxnStatus, current_ts from client-go's low-resolution TSO, refreshed
// every 2 s) and
//   - commits the lock if the transaction committed, rolls it back if it was
//     rolled back;
//   - rolls the transaction back only when its primary lock's TTL has
//     expired (start_ts physical time + TTL < current ts), or the primary is
//     gone and the lock's own TTL has expired;
//   - leaves a lock whose TTL has not expired alone and reports how long it
//     has left. A live client extends its TTL with heartbeats (TxnHeartBeat),
//     so a live transaction is never rolled back; its lock pins the
//     checkpoint for as long as it runs, which is correct: it may still
//     commit at a ts above its start_ts.
//
// Caller start ts 0 pushes no transaction's min_commit_ts. GC's
// BatchResolveLocks would instead roll back every lock below the safepoint,
// live or not (current_ts = MaxUint64): right for GC, wrong here.
func NewLockResolver(store *tikv.KVStore) LockResolver {
	return &kvLockResolver{store: store}
}

type kvLockResolver struct {
	store *tikv.KVStore
}

func (k *kvLockResolver) ResolveLocks(ctx context.Context, r keyspace.Range, maxVersion uint64) (LockScan, error) {
	rr := &regionResolver{BaseRegionLockResolver: tikv.NewRegionLockResolver("pitr coordinator", k.store)}
	stat, err := tikv.ResolveLocksForRange(ctx, rr, maxVersion, r.Start, r.End, tikv.NewGcResolveLockMaxBackoffer, tikv.GCScanLockLimit)
	scan := LockScan{Regions: stat.CompletedRegions, Locks: rr.locks, LiveMs: rr.liveMs}
	if err != nil {
		return scan, fmt.Errorf("resolve locks in [%q, %q): %w", r.Start, r.End, err)
	}
	return scan, nil
}

// regionResolver is tikv.RegionLockResolver with a reader's resolution
// (see NewLockResolver). ResolveLocksForRange calls it from one goroutine.
type regionResolver struct {
	*tikv.BaseRegionLockResolver
	locks  int
	liveMs int64
}

func (r *regionResolver) ScanLocksInOneRegion(bo *tikv.Backoffer, key, endKey []byte, maxVersion uint64, limit uint32) ([]*txnlock.Lock, *tikv.KeyLocation, error) {
	locks, loc, err := r.BaseRegionLockResolver.ScanLocksInOneRegion(bo, key, endKey, maxVersion, limit)
	r.locks += len(locks)
	return locks, loc, err
}

func (r *regionResolver) ResolveLocksInOneRegion(bo *tikv.Backoffer, locks []*txnlock.Lock, loc *tikv.KeyLocation) (*tikv.KeyLocation, error) {
	live, err := r.GetStore().GetLockResolver().ResolveLocks(bo, 0, locks)
	if err != nil {
		return nil, err
	}
	r.liveMs = max(r.liveMs, live)
	return loc, nil
}

// resolveTimeout bounds one resolution of one range.
const resolveTimeout = 5 * time.Minute

// lockKeeper starts lock resolutions for one term; its goroutines belong to
// the term (t.wg) and stop with it.
type lockKeeper struct {
	res   LockResolver
	after time.Duration // resolve ranges lagging more than this
	every time.Duration // at most once per range per this
	log   hclog.Logger
	met   *metrics
	stop  <-chan struct{}
	wg    *sync.WaitGroup

	mu      sync.Mutex
	last    map[string]time.Time // task → start of its last resolution
	running map[string]bool      // task → a resolution is running
	tasks   map[string]*task.LockStatus
}

// lockKeeper returns the term's lock keeper (nil when lock resolution is
// off), making it on first use.
func (t *term) lockKeeper() *lockKeeper {
	c := t.c
	if c.cfg.Locks == nil || c.cfg.ResolveLocksAfter <= 0 {
		return nil
	}
	if t.locks == nil {
		t.locks = &lockKeeper{
			res: c.cfg.Locks, after: c.cfg.ResolveLocksAfter, every: max(c.cfg.ResolveLocksAfter/2, c.cfg.TickInterval),
			log: t.log.Named("locks"), met: c.met, stop: t.stop, wg: &t.wg,
			last: map[string]time.Time{}, running: map[string]bool{}, tasks: map[string]*task.LockStatus{},
		}
	}
	return t.locks
}

// lagBefore is the checkpoint below which a range lags more than the
// lock-resolution threshold (0: lock resolution is off).
func (t *term) lagBefore(now time.Time) uint64 {
	if t.lockKeeper() == nil {
		return 0
	}
	return keyspace.FromTime(now.Add(-t.c.cfg.ResolveLocksAfter))
}

// resolveLocks starts, in the background, one lock resolution over every
// range of a task whose checkpoint lags more than ResolveLocksAfter
// (Compute's Lagging with LagBefore = lagBefore(now)): at most one at a
// time per task and one per ResolveLocksAfter/2, as BR's advancer runs one
// asyncResolveLocksForRanges over all lagging ranges at a time. It returns
// the task's resolutions so far (nil: none).
//
// maxVersion is lagBefore: the locks that can hold a range for longer
// than the threshold started before now - threshold. The one pinning a
// range has start_ts ≤ its checkpoint + 1 (the resolved ts is the oldest
// lock's start_ts), which is ≤ lagBefore as the range's checkpoint is
// below it. Younger locks are left to their transactions: they cannot be
// what holds a range this long. The bound limits the work, not the
// safety: the resolver never rolls back a transaction whose TTL has not
// expired.
func (t *term) resolveLocks(name string, lagging []keyspace.Range, lagBefore uint64, now time.Time) *task.LockStatus {
	k := t.lockKeeper()
	if k == nil {
		return nil
	}
	if len(lagging) > 0 {
		k.start(name, lagging, lagBefore, now)
	}
	return k.status(name)
}

// start runs one resolution of rs unless the task has one running or ran
// one recently.
func (k *lockKeeper) start(name string, rs []keyspace.Range, maxVersion uint64, now time.Time) {
	k.mu.Lock()
	if k.running[name] || now.Sub(k.last[name]) < k.every {
		k.mu.Unlock()
		return
	}
	k.running[name], k.last[name] = true, now
	st := k.tasks[name]
	if st == nil {
		st = &task.LockStatus{}
		k.tasks[name] = st
	}
	st.Runs++
	k.mu.Unlock()
	k.met.lockResolutions.WithLabelValues(name).Inc()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		defer cancel()
		go func() {
			select {
			case <-k.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		var (
			total LockScan
			errs  []error
		)
		for _, r := range rs {
			scan, err := k.res.ResolveLocks(ctx, r, maxVersion)
			total.Regions += scan.Regions
			total.Locks += scan.Locks
			total.LiveMs = max(total.LiveMs, scan.LiveMs)
			if err != nil {
				errs = append(errs, err)
				if ctx.Err() != nil {
					break
				}
			}
		}
		k.finish(name, rs, maxVersion, total, errors.Join(errs...))
	}()
}

// finish records a resolution's outcome.
func (k *lockKeeper) finish(name string, rs []keyspace.Range, maxVersion uint64, scan LockScan, err error) {
	end := time.Now()
	first, last := rs[0], rs[len(rs)-1]
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.running, name)
	st := k.tasks[name]
	st.Locks += int64(scan.Locks)
	st.LastStartKey, st.LastEndKey, st.LastRanges = hex.EncodeToString(first.Start), hex.EncodeToString(last.End), len(rs)
	st.LastUnixMs, st.LastMaxVersion, st.LastLocks, st.LastLiveMs = end.UnixMilli(), maxVersion, scan.Locks, scan.LiveMs
	st.LastError = ""
	k.met.locksFound.WithLabelValues(name).Add(float64(scan.Locks))
	k.met.setLastLockResolution(name, keyspace.Range{Start: first.Start, End: last.End}, end)
	if err != nil {
		st.Errors++
		st.LastError = err.Error()
		k.met.lockResolutionErrors.WithLabelValues(name).Inc()
		k.log.Warn("lock resolution failed", "task", name, "ranges", len(rs), "start", hex.EncodeToString(first.Start),
			"end", hex.EncodeToString(last.End), "error", err)
		return
	}
	if scan.Locks > 0 {
		k.log.Info("resolved locks on lagging ranges", "task", name, "ranges", len(rs), "start", hex.EncodeToString(first.Start),
			"end", hex.EncodeToString(last.End), "max_version", maxVersion, "regions", scan.Regions, "locks", scan.Locks, "live_ms", scan.LiveMs)
	}
}

// status returns a copy of a task's resolutions (nil: none yet).
func (k *lockKeeper) status(name string) *task.LockStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.tasks[name]
	if st == nil {
		return nil
	}
	cp := *st
	return &cp
}
