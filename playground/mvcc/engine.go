package mvcc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ErrClosed is returned by operations on a closed engine.
var ErrClosed = errors.New("mvcc engine closed")

const (
	syncInterval       = 100 * time.Millisecond
	checkpointInterval = time.Second
	// DefaultCheckpointBytes is the WAL volume after which the engine writes
	// a new checkpoint and drops the covered log segments.
	DefaultCheckpointBytes = 64 << 20
)

// Engine is the playground's storage engine: the lock, default and write
// column families in ordered in-memory trees, optionally persisted by a
// write-ahead log and checkpoints. It is safe for concurrent use.
//
// Every state-changing Percolator operation runs under the write lock as one
// atomic Command: logged, applied, then handed to the observers, in that
// order. Reads run under the read lock; they bump max_ts (the concurrency
// manager's) before checking locks, so an async-commit or 1PC prewrite either
// sees the read's ts or its lock is seen by the read.
type Engine struct {
	logger hclog.Logger
	dir    string

	mu        sync.RWMutex
	v         *view
	observers []observerEntry
	nextObs   int
	wal       *wal  // nil in memory-only mode
	walErr    error // sticky: the log is unusable
	closed    bool

	maxTS atomic.Uint64
	// applied counts the batches applied since the engine was created
	// (guarded by mu for writes; see AppliedIndex).
	applied atomic.Uint64

	ckptMu          sync.Mutex // one checkpoint at a time
	checkpointBytes int64
	stop            chan struct{}
	bg              sync.WaitGroup
}

type observerEntry struct {
	id int
	fn Observer
}

// Open opens the engine stored in dir, creating it if needed. An empty dir
// keeps everything in memory.
func Open(dir string, logger hclog.Logger) (*Engine, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	e := &Engine{
		logger:          logger,
		dir:             dir,
		v:               newView(),
		checkpointBytes: DefaultCheckpointBytes,
		stop:            make(chan struct{}),
	}
	if dir == "" {
		return e, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create engine dir: %w", err)
	}
	os.Remove(filepath.Join(dir, checkpointName+".tmp"))
	start := time.Now()
	nextSeg, maxTS, applied, err := recoverDir(dir, e.v, logger)
	if err != nil {
		return nil, fmt.Errorf("recover engine: %w", err)
	}
	e.maxTS.Store(maxTS)
	e.applied.Store(applied)
	f, err := openSegment(dir, nextSeg)
	if err != nil {
		return nil, err
	}
	e.wal = &wal{dir: dir, seg: nextSeg, f: f}
	logger.Info("engine recovered", "dir", dir, "locks", e.v.locks.Len(), "writes", e.v.writes.Len(),
		"values", e.v.data.Len(), "took", time.Since(start))
	e.bg.Add(1)
	go e.background()
	return e, nil
}

// SetCheckpointBytes sets the WAL volume that triggers a checkpoint.
func (e *Engine) SetCheckpointBytes(n int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.checkpointBytes = n
}

func (e *Engine) background() {
	defer e.bg.Done()
	syncT := time.NewTicker(syncInterval)
	defer syncT.Stop()
	ckptT := time.NewTicker(checkpointInterval)
	defer ckptT.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-syncT.C:
			if err := e.syncWAL(); err != nil {
				e.logger.Error("sync wal", "error", err)
			}
		case <-ckptT.C:
			e.mu.RLock()
			due := e.wal != nil && e.wal.size >= e.checkpointBytes
			e.mu.RUnlock()
			if due {
				if err := e.Checkpoint(); err != nil {
					e.logger.Error("checkpoint", "error", err)
				}
			}
		}
	}
}

func (e *Engine) syncWAL() error {
	e.mu.Lock()
	if e.wal == nil || e.closed || !e.wal.dirty {
		e.mu.Unlock()
		return nil
	}
	f := e.wal.f
	e.wal.dirty = false
	e.mu.Unlock()
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}

// Checkpoint writes the whole state to the checkpoint file and drops the log
// segments it covers. It is a no-op in memory-only mode.
func (e *Engine) Checkpoint() error {
	e.ckptMu.Lock()
	defer e.ckptMu.Unlock()
	e.mu.Lock()
	if e.wal == nil || e.closed {
		e.mu.Unlock()
		return nil
	}
	if e.walErr != nil {
		err := e.walErr
		e.mu.Unlock()
		return err
	}
	snap := e.v.clone()
	first, err := e.wal.rotate()
	if err != nil {
		e.walErr = fmt.Errorf("rotate wal: %w", err)
		e.mu.Unlock()
		return e.walErr
	}
	maxTS := e.maxTS.Load()
	applied := e.applied.Load()
	e.mu.Unlock()
	return e.installCheckpoint(snap, first, maxTS, applied)
}

// installCheckpoint writes the checkpoint durably, and only then deletes
// the segments it covers: a copy of the directory (see doc.go) never holds
// a checkpoint that needs a segment already gone.
func (e *Engine) installCheckpoint(v *view, first, maxTS, applied uint64) error {
	start := time.Now()
	if err := writeCheckpoint(e.dir, v, first, maxTS, applied); err != nil {
		return err
	}
	segs, err := listSegments(e.dir)
	if err != nil {
		return fmt.Errorf("list wal: %w", err)
	}
	for _, s := range segs {
		if s < first {
			if err := os.Remove(filepath.Join(e.dir, walName(s))); err != nil {
				return fmt.Errorf("remove wal: %w", err)
			}
		}
	}
	e.logger.Debug("checkpoint written", "first_segment", first, "writes", v.writes.Len(), "took", time.Since(start))
	return nil
}

// Close flushes and closes the engine. In persistent mode it writes a final
// checkpoint, so that reopening does not replay the log.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	close(e.stop)
	e.bg.Wait()
	if e.wal == nil {
		return nil
	}
	e.ckptMu.Lock()
	defer e.ckptMu.Unlock()
	// No write can start any more; the state and the log are frozen.
	w := e.wal
	serr := w.f.Sync()
	cerr := w.f.Close()
	if serr != nil {
		return fmt.Errorf("sync wal: %w", serr)
	}
	if cerr != nil {
		return fmt.Errorf("close wal: %w", cerr)
	}
	if e.walErr != nil {
		return e.walErr
	}
	return e.installCheckpoint(e.v, w.seg+1, e.maxTS.Load(), e.applied.Load())
}

// AppliedIndex returns how many batches (commands, GC and ingest batches,
// loads and resolves) the engine has applied since it was created: it only
// grows, is persisted in the checkpoint and advanced by WAL replay, so an
// engine opened from a copy of the directory reports how far the copy got.
// It stands in for a raft peer's last_index in snapshot recovery. A
// checkpoint of format version 1 carries none: counting starts at 0.
func (e *Engine) AppliedIndex() uint64 { return e.applied.Load() }

// MaxTS returns the concurrency manager's max_ts: the largest ts any read,
// CheckTxnStatus or UpdateMaxTS has used.
func (e *Engine) MaxTS() uint64 { return e.maxTS.Load() }

// UpdateMaxTS raises max_ts to ts (TiKV's concurrency_manager.update_max_ts).
// Async-commit and 1PC transactions prewritten after it get a commit_ts >
// ts; CDC calls it with a fresh TSO before computing a resolved ts, the
// playground after a restart.
func (e *Engine) UpdateMaxTS(ts uint64) {
	if ts == ^uint64(0) {
		return
	}
	for {
		cur := e.maxTS.Load()
		if ts <= cur || e.maxTS.CompareAndSwap(cur, ts) {
			return
		}
	}
}

// Observe registers fn and returns a snapshot taken at exactly that apply
// point: every command applied after the snapshot is passed to fn, none
// before. The cancel func unregisters fn.
func (e *Engine) Observe(fn Observer) (Snapshot, func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.nextObs
	e.nextObs++
	e.observers = append(e.observers, observerEntry{id: id, fn: fn})
	snap := &snapshot{v: e.v.clone()}
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			for i, o := range e.observers {
				if o.id == id {
					e.observers = append(e.observers[:i:i], e.observers[i+1:]...)
					break
				}
			}
		})
	}
	return snap, cancel
}

// Snapshot returns a consistent read view of the current state.
func (e *Engine) Snapshot() Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	return &snapshot{v: e.v.clone()}
}

// write runs fn under the write lock and, if it succeeds, applies the
// mutations it buffered as one Command.
func (e *Engine) write(fn func(t *txn) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	t := &txn{v: e.v}
	if err := fn(t); err != nil {
		return err
	}
	if len(t.mods) == 0 {
		return nil
	}
	return e.applyLocked(&Command{OnePC: t.onePC, Mods: t.mods}, true)
}

// applyLocked logs, applies and (if observed) publishes one command.
func (e *Engine) applyLocked(cmd *Command, observed bool) error {
	if e.wal != nil {
		if e.walErr != nil {
			return e.walErr
		}
		if err := e.wal.append(cmd.Mods); err != nil {
			e.walErr = fmt.Errorf("append wal: %w", err)
			return e.walErr
		}
	}
	for i := range cmd.Mods {
		e.v.apply(&cmd.Mods[i])
	}
	e.applied.Add(1)
	if observed {
		for _, o := range e.observers {
			o.fn(cmd)
		}
	}
	return nil
}

// read runs fn under the read lock after bumping max_ts to ts.
func (e *Engine) read(ts uint64, fn func(v *view) error) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	e.UpdateMaxTS(ts)
	return fn(e.v)
}

// Stats counts the records in each column family.
type Stats struct {
	Locks, Writes, Values int
}

// Stats returns the current record counts.
func (e *Engine) Stats() Stats {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return Stats{Locks: e.v.locks.Len(), Writes: e.v.writes.Len(), Values: e.v.data.Len()}
}
