package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/go-hclog"
)

// RetryOptions configures WithRetry. Zero values mean the defaults.
type RetryOptions struct {
	// MaxAttempts bounds the attempts per operation (first try included).
	// Default 5.
	MaxAttempts int
	// BaseDelay is the backoff before the second attempt; it doubles per
	// attempt up to MaxDelay. The actual delay is drawn uniformly from
	// [d/2, d] ("equal jitter"). Defaults 100ms and 5s.
	BaseDelay, MaxDelay time.Duration
	// MaxBuffer is how much of a non-seekable PutReader stream is buffered
	// in memory so that it can be sent again. A non-seekable stream that
	// is larger, or of unknown size, gets exactly one attempt. Default 16 MiB.
	MaxBuffer int64
	// Logger receives a line per retry. Default: discard.
	Logger hclog.Logger
	// Sleep waits for d or until ctx is done (tests inject a fake).
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for the jitter (tests inject one).
	Rand func() float64
}

// Retry is a Storage that retries transient failures (see IsTransient) of
// the Storage it wraps, with exponential backoff and jitter. It never
// retries NotFound, AlreadyExists, Permission, invalid keys or ranges, or
// a cancelled context.
//
// What is retried and how:
//   - Put, Get, Stat, Exists: the whole call.
//   - PutReader: when r is an io.Seeker it is rewound to where it started;
//     otherwise up to MaxBuffer bytes are buffered first; otherwise the
//     upload gets a single attempt (a half-consumed stream cannot be
//     replayed, and pretending otherwise would upload garbage).
//   - GetRange, NewReader: opening is retried, and a transient error while
//     reading re-opens the object at the current offset (objects are
//     assumed not to change while they are read, which holds for pitr's
//     immutable data files).
//   - List: resumes after the last key delivered, so the callback never
//     sees a key twice. Errors from the callback are returned, not retried.
//   - Delete: a NotFound on a retry counts as success (the failed attempt
//     may have deleted it).
//   - CreateIfAbsent: an AlreadyExists on a retry counts as success when
//     the stored object equals data (the failed attempt may have written it).
type Retry struct {
	s Storage
	o RetryOptions
}

var _ Storage = (*Retry)(nil)

// WithRetry wraps s.
func WithRetry(s Storage, o RetryOptions) *Retry {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.BaseDelay <= 0 {
		o.BaseDelay = 100 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 5 * time.Second
	}
	if o.MaxBuffer == 0 {
		o.MaxBuffer = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Sleep == nil {
		o.Sleep = sleepCtx
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return &Retry{s: s, o: o}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Backoff returns the delay before attempt+1 (attempt >= 1).
func (r *Retry) backoff(attempt int) time.Duration {
	d := r.o.BaseDelay
	for i := 1; i < attempt && d < r.o.MaxDelay; i++ {
		d *= 2
	}
	if d > r.o.MaxDelay {
		d = r.o.MaxDelay
	}
	return d/2 + time.Duration(r.o.Rand()*float64(d/2))
}

// noRetry marks an error that must end the retry loop whatever it wraps.
type noRetry struct{ err error }

func (n *noRetry) Error() string { return n.err.Error() }
func (n *noRetry) Unwrap() error { return n.err }

// do runs fn until it succeeds, fails permanently, ctx ends or the
// attempts are used up.
func (r *Retry) do(ctx context.Context, op, key string, fn func(attempt int) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(attempt)
		var nr *noRetry
		if errors.As(err, &nr) {
			return nr.err
		}
		if err == nil || !IsTransient(err) || ctx.Err() != nil {
			return err
		}
		if attempt >= r.o.MaxAttempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		}
		d := r.backoff(attempt)
		r.o.Logger.Warn("storage operation failed, retrying",
			"op", op, "key", key, "attempt", attempt, "delay", d, "error", err.Error())
		if serr := r.o.Sleep(ctx, d); serr != nil {
			return err
		}
	}
}

func (r *Retry) URL() string  { return r.s.URL() }
func (r *Retry) Close() error { return r.s.Close() }

func (r *Retry) Put(ctx context.Context, key string, data []byte) error {
	return r.do(ctx, "put", key, func(int) error { return r.s.Put(ctx, key, data) })
}

func (r *Retry) PutReader(ctx context.Context, key string, rd io.Reader, size int64) error {
	if sk, ok := rd.(io.Seeker); ok {
		if start, err := sk.Seek(0, io.SeekCurrent); err == nil {
			return r.do(ctx, "put", key, func(attempt int) error {
				if attempt > 1 {
					if _, err := sk.Seek(start, io.SeekStart); err != nil {
						return &noRetry{fmt.Errorf("rewind source for retry: %w", err)}
					}
				}
				return r.s.PutReader(ctx, key, rd, size)
			})
		}
	}
	if size < 0 || size > r.o.MaxBuffer {
		r.o.Logger.Debug("upload from a non-seekable stream gets a single attempt", "key", key, "size", size)
		return r.s.PutReader(ctx, key, rd, size)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(rd, buf); err != nil {
		return fmt.Errorf("storage: put %q: read source: %w", key, err)
	}
	if n, _ := rd.Read(make([]byte, 1)); n > 0 {
		return fmt.Errorf("storage: put %q: %w", key, errTooLong)
	}
	return r.do(ctx, "put", key, func(int) error { return r.s.PutReader(ctx, key, bytes.NewReader(buf), size) })
}

func (r *Retry) Get(ctx context.Context, key string) ([]byte, error) {
	var out []byte
	err := r.do(ctx, "get", key, func(int) error {
		b, err := r.s.Get(ctx, key)
		out = b
		return err
	})
	return out, err
}

func (r *Retry) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	return r.open(ctx, key, off, length)
}

func (r *Retry) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	return r.open(ctx, key, 0, -1)
}

func (r *Retry) open(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, "read", key, func(int) error {
		var err error
		if off == 0 && length < 0 {
			rc, err = r.s.NewReader(ctx, key)
		} else {
			rc, err = r.s.GetRange(ctx, key, off, length)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumingReader{r: r, ctx: ctx, key: key, rc: rc, off: off, left: length}, nil
}

// resumingReader re-opens the object at the current offset after a
// transient read error.
type resumingReader struct {
	r      *Retry
	ctx    context.Context
	key    string
	rc     io.ReadCloser
	off    int64 // offset of the next byte
	left   int64 // bytes still wanted, < 0 = to the end
	failed int   // consecutive failed reads
}

func (rr *resumingReader) Read(p []byte) (int, error) {
	for {
		if rr.left == 0 {
			return 0, io.EOF
		}
		if rr.left > 0 && int64(len(p)) > rr.left {
			p = p[:rr.left]
		}
		n, err := rr.rc.Read(p)
		rr.off += int64(n)
		if rr.left > 0 {
			rr.left -= int64(n)
		}
		if n > 0 {
			rr.failed = 0
		}
		if err == nil || err == io.EOF || !IsTransient(err) || rr.ctx.Err() != nil {
			return n, err
		}
		rr.failed++
		if rr.failed >= rr.r.o.MaxAttempts {
			return n, fmt.Errorf("%w (gave up after %d attempts)", err, rr.failed)
		}
		d := rr.r.backoff(rr.failed)
		rr.r.o.Logger.Warn("storage read failed, resuming", "key", rr.key, "offset", rr.off, "delay", d, "error", err.Error())
		_ = rr.rc.Close()
		if serr := rr.r.o.Sleep(rr.ctx, d); serr != nil {
			return n, err
		}
		rc, oerr := rr.r.s.GetRange(rr.ctx, rr.key, rr.off, rr.left)
		if oerr != nil {
			// Leave a reader that keeps failing the same way.
			rr.rc = errReader{oerr}
			if !IsTransient(oerr) {
				return n, oerr
			}
		} else {
			rr.rc = rc
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (rr *resumingReader) Close() error { return rr.rc.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
func (e errReader) Close() error             { return nil }

// errCallback carries the List callback's error past the retry loop.
type errCallback struct{ err error }

func (e *errCallback) Error() string { return e.err.Error() }

func (r *Retry) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	var (
		last    string
		started bool
		cbErr   error
	)
	err := r.do(ctx, "list", prefix, func(int) error {
		return r.s.List(ctx, prefix, func(oi ObjectInfo) error {
			if started && oi.Key <= last {
				return nil // delivered before the retry
			}
			if err := fn(oi); err != nil {
				cbErr = err
				return &noRetry{&errCallback{err}}
			}
			last, started = oi.Key, true
			return nil
		})
	})
	if cbErr != nil {
		return cbErr
	}
	return err
}

func (r *Retry) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete", key, func(attempt int) error {
		err := r.s.Delete(ctx, key)
		if attempt > 1 && errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
}

func (r *Retry) Exists(ctx context.Context, key string) (bool, error) {
	var ok bool
	err := r.do(ctx, "exists", key, func(int) error {
		var err error
		ok, err = r.s.Exists(ctx, key)
		return err
	})
	return ok, err
}

func (r *Retry) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	var info ObjectInfo
	err := r.do(ctx, "stat", key, func(int) error {
		var err error
		info, err = r.s.Stat(ctx, key)
		return err
	})
	return info, err
}

func (r *Retry) CreateIfAbsent(ctx context.Context, key string, data []byte) error {
	return r.do(ctx, "create", key, func(attempt int) error {
		err := r.s.CreateIfAbsent(ctx, key, data)
		if attempt > 1 && errors.Is(err, ErrAlreadyExists) {
			if got, gerr := r.s.Get(ctx, key); gerr == nil && bytes.Equal(got, data) {
				return nil
			}
		}
		return err
	})
}

func (r *Retry) GetVersion(ctx context.Context, key string) ([]byte, Version, error) {
	var (
		data []byte
		v    Version
	)
	err := r.do(ctx, "get", key, func(int) error {
		var err error
		data, v, err = r.s.GetVersion(ctx, key)
		return err
	})
	return data, v, err
}

// PutIfMatch retries like CreateIfAbsent: an attempt after a failed one
// may find its own earlier write landed; a conflict with exactly the
// bytes it meant to write is then success.
func (r *Retry) PutIfMatch(ctx context.Context, key string, data []byte, v Version) error {
	return r.do(ctx, "put-if-match", key, func(attempt int) error {
		err := r.s.PutIfMatch(ctx, key, data, v)
		if attempt > 1 && errors.Is(err, ErrConflict) {
			if got, gerr := r.s.Get(ctx, key); gerr == nil && bytes.Equal(got, data) {
				return nil
			}
		}
		return err
	})
}
