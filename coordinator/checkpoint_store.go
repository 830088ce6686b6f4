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
// It writes the latest checkpoint it was given, only upwards: the value in
// storage is read once, then every write must be above the last one. It
// writes nothing once the term's stop channel is closed.
type cpWriter struct {
	task, url string
	term      int64
	log       hclog.Logger
	stop      <-chan struct{}
	now       func() time.Time
	kick      chan struct{}

	mu      sync.Mutex
	want    uint64
	written uint64 // in storage (as read or written); valid when known
	known   bool
	lastErr string
}

func newCPWriter(taskName, url string, term int64, log hclog.Logger, stop <-chan struct{}, now func() time.Time) *cpWriter {
	return &cpWriter{task: taskName, url: url, term: term, log: log, stop: stop, now: now, kick: make(chan struct{}, 1)}
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
		err := w.once(&s)
		w.mu.Lock()
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
		st, err := storage.Open(ctx, w.url, storage.Logger(w.log.Named("storage")))
		cancel()
		if err != nil {
			return err
		}
		*s = st
	}
	w.mu.Lock()
	known, written, want := w.known, w.written, w.want
	w.mu.Unlock()
	if !known {
		ctx, cancel := w.opCtx()
		b, err := (*s).Get(ctx, logfile.CheckpointPath)
		cancel()
		switch {
		case errors.Is(err, storage.ErrNotFound):
		case err != nil:
			return fmt.Errorf("read %s: %w", logfile.CheckpointPath, err)
		default:
			gc, err := logfile.DecodeCheckpoint(b)
			if err != nil {
				return fmt.Errorf("read %s: %w", logfile.CheckpointPath, err)
			}
			written = gc.GetTs()
		}
		w.mu.Lock()
		w.written, w.known = written, true
		w.mu.Unlock()
	}
	if want <= written {
		return nil
	}
	b, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: w.task, Ts: want, WrittenUnixMs: w.now().UnixMilli(), Term: w.term})
	if err != nil {
		return err
	}
	select {
	case <-w.stop:
		return errTermOver
	default:
	}
	ctx, cancel := w.opCtx()
	defer cancel()
	if err := (*s).Put(ctx, logfile.CheckpointPath, b); err != nil {
		return fmt.Errorf("write %s: %w", logfile.CheckpointPath, err)
	}
	w.mu.Lock()
	w.written = max(w.written, want)
	w.mu.Unlock()
	return nil
}

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
