package storage_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

// fakeClock advances only when someone sleeps, so rate assertions are
// exact and independent of the machine's speed.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	slept time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.slept += d
	return ctx.Err()
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) elapsed() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slept
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

func TestRateLimit(t *testing.T) {
	ctx := context.Background()
	type step func(t *testing.T, r *storage.RateLimited, c *fakeClock)
	put := func(n int) step {
		return func(t *testing.T, r *storage.RateLimited, c *fakeClock) {
			require.NoError(t, r.Put(ctx, "k", make([]byte, n)))
		}
	}
	get := func(t *testing.T, r *storage.RateLimited, c *fakeClock) {
		rc, err := r.NewReader(ctx, "k")
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, rc)
		require.NoError(t, err)
		require.NoError(t, rc.Close())
	}
	cases := []struct {
		name  string
		limit int64
		burst int64
		steps []step
		// The fake clock must have advanced exactly this much (± 1ms for
		// float rounding): (bytes - burst) / limit.
		want time.Duration
	}{
		{"put_10MiB_at_1MiBps", mib, 64 * kib, []step{put(10 * mib)}, time.Duration(float64(10*mib-64*kib) / mib * float64(time.Second))},
		{"put_within_burst_is_free", mib, mib, []step{put(mib)}, 0},
		{"put_then_read_share_the_bucket", 2 * mib, 64 * kib, []step{put(4 * mib), get}, time.Duration(float64(8*mib-64*kib) / (2 * mib) * float64(time.Second))},
		{"unlimited", 0, 64 * kib, []step{put(10 * mib), get}, 0},
		{"set_limit_at_runtime", mib, 64 * kib, []step{
			put(mib + 64*kib), // 1s
			func(t *testing.T, r *storage.RateLimited, c *fakeClock) { r.SetLimit(4 * mib) },
			put(4 * mib), // 1s more
			func(t *testing.T, r *storage.RateLimited, c *fakeClock) { r.SetLimit(0) },
			put(20 * mib), // free
			func(t *testing.T, r *storage.RateLimited, c *fakeClock) { r.SetLimit(mib) },
			put(mib + 64*kib), // the bucket starts full again: 1s
		}, 3 * time.Second},
		{"idle_time_refills_up_to_burst_only", mib, 256 * kib, []step{
			put(256 * kib), // burst
			func(t *testing.T, r *storage.RateLimited, c *fakeClock) { c.advance(time.Hour) },
			put(256*kib + mib), // refilled to 256 KiB only: 1s
		}, time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clock := newFakeClock()
			r := storage.WithRateLimit(open(t, "mem://"), c.limit, storage.RateLimitOptions{Burst: c.burst, Clock: clock})
			for _, s := range c.steps {
				s(t, r, clock)
			}
			require.InDelta(t, float64(c.want), float64(clock.elapsed()), float64(time.Millisecond),
				"want %v, slept %v", c.want, clock.elapsed())
		})
	}
}

func TestRateLimitCountsEveryPayloadPath(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	r := storage.WithRateLimit(open(t, "mem://"), mib, storage.RateLimitOptions{Burst: 1, Clock: clock})
	var total int64
	check := func(n int64) {
		t.Helper()
		total += n
		require.InDelta(t, float64(total)/mib*float64(time.Second), float64(clock.elapsed()), float64(time.Millisecond))
	}
	require.NoError(t, r.Put(ctx, "a", make([]byte, mib)))
	check(mib)
	require.NoError(t, r.PutReader(ctx, "b", bytes.NewReader(make([]byte, 2*mib)), 2*mib))
	check(2 * mib)
	require.NoError(t, r.CreateIfAbsent(ctx, "c", make([]byte, mib/2)))
	check(mib / 2)
	_, err := r.Get(ctx, "b")
	require.NoError(t, err)
	check(2 * mib)
	rc, err := r.GetRange(ctx, "b", 100, mib)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	check(mib)
	// Metadata is free.
	_, err = r.Stat(ctx, "b")
	require.NoError(t, err)
	require.NoError(t, r.List(ctx, "", func(storage.ObjectInfo) error { return nil }))
	check(0)
	require.Equal(t, int64(mib), r.Limit())
}

func TestRateLimitConcurrentCallersShareTheLimit(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	r := storage.WithRateLimit(open(t, "mem://"), mib, storage.RateLimitOptions{Burst: 64 * kib, Clock: clock})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, r.Put(ctx, "k", make([]byte, mib)))
		}()
	}
	wg.Wait()
	// Whatever the interleaving, 8 MiB at 1 MiB/s needs at least ~8s of
	// waiting in total (the fake clock sums concurrent sleeps).
	require.GreaterOrEqual(t, clock.elapsed(), time.Duration(float64(8*mib-64*kib)/mib*float64(time.Second))-time.Millisecond)
}

func TestRateLimitCancelledWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := storage.WithRateLimit(open(t, "mem://"), 1, storage.RateLimitOptions{Burst: 1, Clock: newFakeClock()})
	require.ErrorIs(t, r.Put(ctx, "k", make([]byte, 1000)), context.Canceled)
	ok, err := r.Exists(context.Background(), "k")
	require.NoError(t, err)
	require.False(t, ok)
}

// The wrappers stacked over mem still pass the whole suite, and the
// rate-limited stream stays seekable for the retry layer below it.
func TestConformanceWrappedMem(t *testing.T) {
	t.Parallel()
	storagetest.Run(t, func(t *testing.T) storage.Storage { return wrapAll(t, open(t, "mem://")) })
}

func wrapAll(t *testing.T, s storage.Storage) storage.Storage {
	t.Helper()
	r := storage.WithRetry(s, storage.RetryOptions{})
	l := storage.WithRateLimit(r, 0, storage.RateLimitOptions{})
	m, err := storage.WithMetrics(l, nil, storage.MetricsOptions{})
	require.NoError(t, err)
	return m
}

// TestRateLimitShare: two storages sharing one bucket pay for each
// other's bytes.
func TestRateLimitShare(t *testing.T) {
	ctx := context.Background()
	c := newFakeClock()
	a, err := storage.Open(ctx, "mem://a")
	require.NoError(t, err)
	b, err := storage.Open(ctx, "mem://b")
	require.NoError(t, err)
	ra := storage.WithRateLimit(a, mib, storage.RateLimitOptions{Burst: mib, Clock: c})
	rb := ra.Share(b)
	require.NoError(t, ra.Put(ctx, "x", make([]byte, mib)))
	require.Zero(t, c.elapsed(), "the burst")
	require.NoError(t, rb.Put(ctx, "y", make([]byte, 2*mib)))
	require.Equal(t, 2*time.Second, c.elapsed(), "b pays for a's bytes too")
	rb.SetLimit(2 * mib)
	require.Equal(t, int64(2*mib), ra.Limit())
}
