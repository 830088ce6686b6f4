package storage_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
)

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	m, err := storage.WithMetrics(open(t, "mem://"), reg, storage.MetricsOptions{ConstLabels: prometheus.Labels{"storage": "backup"}})
	require.NoError(t, err)

	require.NoError(t, m.Put(ctx, "a", make([]byte, 100)))
	require.NoError(t, m.PutReader(ctx, "b", strings.NewReader("12345"), 5))
	require.NoError(t, m.CreateIfAbsent(ctx, "c", []byte("xy")))
	require.ErrorIs(t, m.CreateIfAbsent(ctx, "c", []byte("xy")), storage.ErrAlreadyExists)
	_, err = m.Get(ctx, "a")
	require.NoError(t, err)
	_, err = m.Get(ctx, "missing")
	require.ErrorIs(t, err, storage.ErrNotFound)
	rc, err := m.GetRange(ctx, "a", 10, 20)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.NoError(t, m.Delete(ctx, "b"))
	require.ErrorIs(t, m.Put(ctx, "bad//key", nil), storage.ErrInvalidKey)

	ops := func(op, result string) float64 {
		c, err := m.Collectors()[0].(*prometheus.CounterVec).GetMetricWithLabelValues(op, result)
		require.NoError(t, err)
		return testutil.ToFloat64(c)
	}
	require.Equal(t, 2.0, ops("put", "ok"))
	require.Equal(t, 1.0, ops("put", "invalid"))
	require.Equal(t, 1.0, ops("create", "ok"))
	require.Equal(t, 1.0, ops("create", "already_exists"))
	require.Equal(t, 1.0, ops("get", "ok"))
	require.Equal(t, 1.0, ops("get", "not_found"))
	require.Equal(t, 1.0, ops("read", "ok"))
	require.Equal(t, 1.0, ops("delete", "ok"))

	written, err := m.Collectors()[1].(*prometheus.CounterVec).GetMetricWithLabelValues("write")
	require.NoError(t, err)
	require.Equal(t, 107.0, testutil.ToFloat64(written))
	read, err := m.Collectors()[1].(*prometheus.CounterVec).GetMetricWithLabelValues("read")
	require.NoError(t, err)
	require.Equal(t, 120.0, testutil.ToFloat64(read))

	// Every observation lands in the histogram too.
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pitr_storage_bytes_total Payload bytes written to and read from storage.
# TYPE pitr_storage_bytes_total counter
pitr_storage_bytes_total{direction="read",storage="backup"} 120
pitr_storage_bytes_total{direction="write",storage="backup"} 107
`), "pitr_storage_bytes_total"))
	n, err := testutil.GatherAndCount(reg, "pitr_storage_operation_duration_seconds")
	require.NoError(t, err)
	require.Equal(t, 5, n) // put, create, get, read, delete

	// A second storage in the same registry needs its own labels...
	_, err = storage.WithMetrics(open(t, "mem://"), reg, storage.MetricsOptions{ConstLabels: prometheus.Labels{"storage": "backup"}})
	require.Error(t, err)
	// ...and works with them: no global state.
	_, err = storage.WithMetrics(open(t, "mem://"), reg, storage.MetricsOptions{ConstLabels: prometheus.Labels{"storage": "restore"}})
	require.NoError(t, err)
}
