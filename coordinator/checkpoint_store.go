package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// storageOpTimeout bounds one storage call of the checkpoint writer.
const storageOpTimeout = 30 * time.Second

// cpWriter writes one task's checkpoint/global in the background, so a slow
// or unreachable storage never stalls the tick (etcd and the GC hold go on).
// It writes the latest checkpoint it was given, only upwards: before each
// write it reads checkpoint/global and its version, writes only if the
// stored value is lower, and writes with PutIfMatch on that version, so a
// concurrent write (a deposed term's late PUT, another term) makes it read
// again instead of lowering the value (audit F7). On a store that ignores
// the condition (an S3 without conditional PUT) this degrades to
// read-compare-write, racy only between the read and the write. It writes
// nothing once the term's stop channel is closed.
type cpWriter struct {
	task, url string
	term      int64
	log       hclog.Logger
	stop      <-chan struct{}
	now       func() time.Time
	kick      chan struct{}
	// open opens the task's storage (storage.OpenStack; tests wrap it).
	open func(ctx context.Context, url string) (storage.Storage, error)

	mu      sync.Mutex
	want    uint64
	written uint64 // in storage (as read or written); valid when known
	known   bool
	lastErr string
	busy    bool // a write round is under way
}

// newCPWriter writes a task's checkpoint/global through the storage stack
// (retries; pitr_storage_* into met when set).
func newCPWriter(taskName, url string, term int64, log hclog.Logger, stop <-chan struct{}, now func() time.Time, met *storage.MetricsSet) *cpWriter {
	return &cpWriter{task: taskName, url: url, term: term, log: log, stop: stop, now: now, kick: make(chan struct{}, 1),
		open: func(ctx context.Context, url string) (storage.Storage, error) {
			return storage.OpenStack(ctx, url, storage.StackOptions{Logger: log.Named("storage"), Metrics: met})
		}}
}

// set asks for cp to be written (if above what storage holds).
func (w *cpWriter) set(cp uint64) {
	w.mu.Lock()
	w.want = max(w.want, cp)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// err returns the last write error ("" once a write succeeded).
func (w *cpWriter) err() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// idle reports whether no write round is under way or asked for.
func (w *cpWriter) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.busy && len(w.kick) == 0
}

// stored returns the checkpoint known to be in storage.
func (w *cpWriter) stored() (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written, w.known
}

// run writes until stop is closed.
func (w *cpWriter) run() {
	var s storage.Storage
	defer func() {
		if s != nil {
			_ = s.Close()
		}
	}()
	backoff := time.Duration(0)
	for {
		if backoff > 0 {
			select {
			case <-w.stop:
				return
			case <-time.After(backoff):
			}
		} else {
			select {
			case <-w.stop:
				return
			case <-w.kick:
			}
		}
		w.mu.Lock()
		w.busy = true
		w.mu.Unlock()
		err := w.once(&s)
		w.mu.Lock()
		w.busy = false
		pending := w.want > w.written || !w.known
		if err != nil {
			w.lastErr = fmt.Sprintf("storage checkpoint: %v", err)
		} else {
			w.lastErr = ""
		}
		w.mu.Unlock()
		switch {
		case errors.Is(err, errTermOver):
			return
		case err != nil:
			w.log.Warn("write storage checkpoint", "task", w.task, "error", err)
			backoff = min(max(2*backoff, time.Second), 30*time.Second)
		case pending:
			backoff = 0
			w.set(0) // go round again
		default:
			backoff = 0
		}
	}
}

func (w *cpWriter) once(s *storage.Storage) error {
	if *s == nil {
		ctx, cancel := w.opCtx()
		st, err := w.open(ctx, w.url)
		cancel()
		if err != nil {
			return err
		}
		*s = st
	}
	w.mu.Lock()
	known, written, want := w.known, w.written, w.want
	w.mu.Unlock()
	if known && want <= written {
		return nil
	}
	// Read, compare, write conditionally on the version read: a write of
	// another term (or anyone) in between makes ours fail, and we read
	// again. So checkpoint/global never goes down, whatever order two
	// terms' writes land in (I2 in storage, audit F7).
	for attempt := 1; ; attempt++ {
		ctx, cancel := w.opCtx()
		b, v, err := (*s).GetVersion(ctx, logfile.CheckpointPath)
		cancel()
		stored := uint64(0)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			v = storage.NoVersion
		case err != nil:
			return fmt.Errorf("read %s: %w", logfile.CheckpointPath, err)
		default:
			// A corrupt checkpoint is not overwritten: its value is unknown,
			// and writing ours over it could lower it. It stays an error in
			// the task's status until someone looks.
			gc, err := logfile.DecodeCheckpoint(b)
			if err != nil {
				return fmt.Errorf("read %s: %w", logfile.CheckpointPath, err)
			}
			stored = gc.GetTs()
		}
		if stored >= want {
			w.mu.Lock()
			w.written, w.known = max(w.written, stored), true
			w.mu.Unlock()
			return nil
		}
		nb, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: w.task, Ts: want, WrittenUnixMs: w.now().UnixMilli(), Term: w.term})
		if err != nil {
			return err
		}
		select {
		case <-w.stop:
			return errTermOver
		default:
		}
		ctx, cancel = w.opCtx()
		err = (*s).PutIfMatch(ctx, logfile.CheckpointPath, nb, v)
		cancel()
		switch {
		case err == nil:
			w.mu.Lock()
			w.written, w.known = max(w.written, want), true
			w.mu.Unlock()
			return nil
		case errors.Is(err, storage.ErrConflict) && attempt < maxCPConflicts:
			w.log.Debug("checkpoint/global changed under us; reading it again", "task", w.task, "want", want)
		default:
			return fmt.Errorf("write %s: %w", logfile.CheckpointPath, err)
		}
	}
}

// maxCPConflicts bounds the read-compare-write rounds of one write; past
// it the writer backs off and tries again later.
const maxCPConflicts = 5

// opCtx is a context for one storage call, cancelled when the term stops.
func (w *cpWriter) opCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), storageOpTimeout)
	go func() {
		select {
		case <-w.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
