package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"time"
)

// Clock is the time source of WithRateLimit; tests inject a fake one.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx is done.
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time                                   { return time.Now() }
func (realClock) Sleep(ctx context.Context, d time.Duration) error { return sleepCtx(ctx, d) }

// RateLimitOptions configures WithRateLimit.
type RateLimitOptions struct {
	// Burst is the bucket size in bytes: how much may pass at once after an
	// idle period. Default 1 MiB.
	Burst int64
	// Clock defaults to the wall clock.
	Clock Clock
}

// RateLimited is a Storage whose payload bytes, uploaded and downloaded
// together, pass a token bucket of Limit bytes per second. Put and
// PutReader are charged as the uploader reads the data; reads as the
// caller reads them (Get reads through NewReader); CreateIfAbsent pays
// for its (small) payload up front. Metadata calls are free.
type RateLimited struct {
	s Storage
	b *bucket
}

// bucket is the token bucket; Share hands it to another storage.
type bucket struct {
	clock Clock

	mu     sync.Mutex
	limit  float64 // bytes per second; <= 0 means unlimited
	burst  float64
	tokens float64 // may go negative: a debt that later callers wait out
	last   time.Time
}

var _ Storage = (*RateLimited)(nil)

// WithRateLimit wraps s with a limit of bytesPerSec (<= 0: unlimited).
func WithRateLimit(s Storage, bytesPerSec int64, o RateLimitOptions) *RateLimited {
	if o.Burst <= 0 {
		o.Burst = 1 << 20
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	r := &RateLimited{s: s, b: &bucket{clock: o.Clock, burst: float64(o.Burst)}}
	r.SetLimit(bytesPerSec)
	return r
}

// Share returns s limited by the same bucket as r: the limit holds for
// the bytes of both together (the agent's one upload limit over every
// task's storage).
func (r *RateLimited) Share(s Storage) *RateLimited { return &RateLimited{s: s, b: r.b} }

// SetLimit changes the limit at run time; <= 0 removes it. Callers already
// waiting finish their wait as computed under the old limit.
func (r *RateLimited) SetLimit(bytesPerSec int64) {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	now := r.b.clock.Now()
	if r.b.limit > 0 {
		r.b.refill(now)
	} else {
		r.b.tokens = r.b.burst
	}
	r.b.last = now
	r.b.limit = float64(bytesPerSec)
}

// Limit returns the current limit in bytes per second (0: unlimited).
func (r *RateLimited) Limit() int64 {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	if r.b.limit <= 0 {
		return 0
	}
	return int64(r.b.limit)
}

func (b *bucket) refill(now time.Time) {
	if el := now.Sub(b.last); el > 0 {
		b.tokens += el.Seconds() * b.limit
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
}

// wait takes n tokens, then sleeps off any debt. n may exceed the burst:
// the bucket goes that much into debt at once, which over time is the same
// as taking it in burst-sized pieces.
func (r *RateLimited) wait(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	r.b.mu.Lock()
	if r.b.limit <= 0 {
		r.b.mu.Unlock()
		return nil
	}
	r.b.refill(r.b.clock.Now())
	r.b.tokens -= float64(n)
	var d time.Duration
	if r.b.tokens < 0 {
		d = time.Duration(-r.b.tokens / r.b.limit * float64(time.Second))
	}
	r.b.mu.Unlock()
	if d <= 0 {
		return nil
	}
	if err := r.b.clock.Sleep(ctx, d); err != nil {
		r.b.mu.Lock()
		r.b.tokens += float64(n) // not used after all
		r.b.mu.Unlock()
		return err
	}
	return nil
}

func (r *RateLimited) URL() string  { return r.s.URL() }
func (r *RateLimited) Close() error { return r.s.Close() }

func (r *RateLimited) Put(ctx context.Context, key string, data []byte) error {
	return r.PutReader(ctx, key, bytes.NewReader(data), int64(len(data)))
}

func (r *RateLimited) PutReader(ctx context.Context, key string, rd io.Reader, size int64) error {
	return r.s.PutReader(ctx, key, r.meter(ctx, rd), size)
}

// meter charges reads from rd; the result is seekable if rd is, so a
// retrying Storage below can rewind it (and the resent bytes pay again).
func (r *RateLimited) meter(ctx context.Context, rd io.Reader) io.Reader {
	m := &meteredReader{r: r, ctx: ctx, rd: rd}
	if sk, ok := rd.(io.Seeker); ok {
		return &meteredSeeker{meteredReader: m, sk: sk}
	}
	return m
}

type meteredReader struct {
	r   *RateLimited
	ctx context.Context
	rd  io.Reader
}

func (m *meteredReader) Read(p []byte) (int, error) {
	n, err := m.rd.Read(p)
	if n > 0 {
		if werr := m.r.wait(m.ctx, int64(n)); werr != nil {
			return n, werr
		}
	}
	return n, err
}

type meteredSeeker struct {
	*meteredReader
	sk io.Seeker
}

func (m *meteredSeeker) Seek(off int64, whence int) (int64, error) { return m.sk.Seek(off, whence) }

type meteredReadCloser struct {
	meteredReader
	c io.Closer
}

func (m *meteredReadCloser) Close() error { return m.c.Close() }

func (r *RateLimited) Get(ctx context.Context, key string) ([]byte, error) {
	rc, err := r.NewReader(ctx, key)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	return b, errors.Join(err, rc.Close())
}

func (r *RateLimited) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	rc, err := r.s.GetRange(ctx, key, off, length)
	if err != nil {
		return nil, err
	}
	return &meteredReadCloser{meteredReader{r: r, ctx: ctx, rd: rc}, rc}, nil
}

func (r *RateLimited) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := r.s.NewReader(ctx, key)
	if err != nil {
		return nil, err
	}
	return &meteredReadCloser{meteredReader{r: r, ctx: ctx, rd: rc}, rc}, nil
}

func (r *RateLimited) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return r.s.List(ctx, prefix, fn)
}

func (r *RateLimited) Delete(ctx context.Context, key string) error { return r.s.Delete(ctx, key) }

func (r *RateLimited) Exists(ctx context.Context, key string) (bool, error) {
	return r.s.Exists(ctx, key)
}

func (r *RateLimited) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	return r.s.Stat(ctx, key)
}

func (r *RateLimited) CreateIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := r.wait(ctx, int64(len(data))); err != nil {
		return err
	}
	return r.s.CreateIfAbsent(ctx, key, data)
}

func (r *RateLimited) GetVersion(ctx context.Context, key string) ([]byte, Version, error) {
	data, v, err := r.s.GetVersion(ctx, key)
	if err == nil {
		err = r.wait(ctx, int64(len(data)))
	}
	return data, v, err
}

func (r *RateLimited) PutIfMatch(ctx context.Context, key string, data []byte, v Version) error {
	if err := r.wait(ctx, int64(len(data))); err != nil {
		return err
	}
	return r.s.PutIfMatch(ctx, key, data, v)
}
