package storage

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// TestOpenStack: the stack works end to end, several stacks record into
// one metrics set registered once, and the limit changes at run time.
func TestOpenStack(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	set, err := NewMetricsSet(reg, MetricsOptions{})
	require.NoError(t, err)
	_, err = NewMetricsSet(reg, MetricsOptions{})
	require.Error(t, err, "a second set with the same names cannot register")

	a, err := OpenStack(ctx, "mem://a", StackOptions{Metrics: set, RateLimit: 8 << 20})
	require.NoError(t, err)
	b, err := OpenStack(ctx, "mem://b", StackOptions{Metrics: set})
	require.NoError(t, err)
	require.NoError(t, a.Put(ctx, "k", []byte("hello")))
	require.NoError(t, b.Put(ctx, "k", []byte("world!")))
	got, err := a.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "hello", string(got))

	ops := set.Collectors()[0].(*prometheus.CounterVec)
	require.Equal(t, 2.0, testutil.ToFloat64(ops.WithLabelValues("put", "ok")), "both stacks count in the one set")
	written := set.Collectors()[1].(*prometheus.CounterVec)
	require.Equal(t, 11.0, testutil.ToFloat64(written.WithLabelValues("write")))

	require.Equal(t, int64(8<<20), a.Limit())
	a.SetLimit(1 << 20)
	require.Equal(t, int64(1<<20), a.Limit())
	a.SetLimit(0)
	require.Zero(t, a.Limit())
	require.Zero(t, b.Limit())
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())

	// A shared limit: one bucket, set from anywhere.
	shared := NewSharedLimit(4 << 20)
	c, err := OpenStack(ctx, "mem://c", StackOptions{SharedLimit: shared})
	require.NoError(t, err)
	d, err := OpenStack(ctx, "mem://d", StackOptions{SharedLimit: shared})
	require.NoError(t, err)
	require.Equal(t, int64(4<<20), c.Limit())
	d.SetLimit(2 << 20)
	require.Equal(t, int64(2<<20), c.Limit())
	require.Equal(t, int64(2<<20), shared.Limit())
}
