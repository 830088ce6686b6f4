package storage

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricsOptions configures WithMetrics.
type MetricsOptions struct {
	// Namespace and Subsystem prefix the metric names; defaults "pitr" and
	// "storage".
	Namespace, Subsystem string
	// ConstLabels tell several wrapped storages apart in one registry,
	// e.g. {"storage": "backup"}.
	ConstLabels prometheus.Labels
	// Buckets of the latency histogram in seconds; default 1ms .. ~65s.
	Buckets []float64
}

// Metered is a Storage that records, per operation:
//
//	pitr_storage_operations_total{op, result}         counter
//	pitr_storage_bytes_total{direction="read|write"}  counter of payload bytes
//	pitr_storage_operation_duration_seconds{op}       histogram
//
// op is one of put, get, read (GetRange and NewReader, timed until Close),
// list, delete, exists, stat, create; result is one of ok, not_found,
// already_exists, permission, invalid, canceled, error.
type Metered struct {
	s       Storage
	ops     *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

var _ Storage = (*Metered)(nil)

// WithMetrics wraps s and registers its metrics with reg (nil: none are
// registered, which is handy in tests). There is no global state, so
// several Metered can live in one process when their ConstLabels differ;
// storages that should share series use one MetricsSet instead.
func WithMetrics(s Storage, reg prometheus.Registerer, o MetricsOptions) (*Metered, error) {
	set, err := NewMetricsSet(reg, o)
	if err != nil {
		return nil, err
	}
	return set.Wrap(s), nil
}

// MetricsSet is one set of storage metrics, registered once, that any
// number of storages record into: the agent and the coordinator open a
// storage per task, and a task that restarts opens it again.
type MetricsSet struct {
	ops     *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// NewMetricsSet makes the collectors and registers them with reg (nil:
// none are registered).
func NewMetricsSet(reg prometheus.Registerer, o MetricsOptions) (*MetricsSet, error) {
	if o.Namespace == "" {
		o.Namespace = "pitr"
	}
	if o.Subsystem == "" {
		o.Subsystem = "storage"
	}
	if o.Buckets == nil {
		o.Buckets = prometheus.ExponentialBuckets(0.001, 2, 17)
	}
	m := &MetricsSet{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: o.Namespace, Subsystem: o.Subsystem, Name: "operations_total",
			Help: "Storage operations by operation and result.", ConstLabels: o.ConstLabels,
		}, []string{"op", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: o.Namespace, Subsystem: o.Subsystem, Name: "bytes_total",
			Help: "Payload bytes written to and read from storage.", ConstLabels: o.ConstLabels,
		}, []string{"direction"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: o.Namespace, Subsystem: o.Subsystem, Name: "operation_duration_seconds",
			Help: "Storage operation latency; for readers, from open to Close.", ConstLabels: o.ConstLabels,
			Buckets: o.Buckets,
		}, []string{"op"}),
	}
	if reg != nil {
		for _, c := range m.Collectors() {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Collectors returns the operations, bytes and latency collectors, in that
// order.
func (m *MetricsSet) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.ops, m.bytes, m.latency}
}

// Wrap returns s recording into the set.
func (m *MetricsSet) Wrap(s Storage) *Metered {
	return &Metered{s: s, ops: m.ops, bytes: m.bytes, latency: m.latency}
}

// Result returns the result label for err.
func Result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrAlreadyExists):
		return "already_exists"
	case errors.Is(err, ErrPermission):
		return "permission"
	case errors.Is(err, ErrInvalidKey), errors.Is(err, ErrInvalidRange):
		return "invalid"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	default:
		return "error"
	}
}

// Collectors returns the operations, bytes and latency collectors, in that
// order (for tests and for registering elsewhere).
func (m *Metered) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.ops, m.bytes, m.latency}
}

func (m *Metered) observe(op string, start time.Time, err error) {
	m.ops.WithLabelValues(op, Result(err)).Inc()
	m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (m *Metered) URL() string  { return m.s.URL() }
func (m *Metered) Close() error { return m.s.Close() }

func (m *Metered) Put(ctx context.Context, key string, data []byte) error {
	start := time.Now()
	err := m.s.Put(ctx, key, data)
	m.observe("put", start, err)
	if err == nil {
		m.bytes.WithLabelValues("write").Add(float64(len(data)))
	}
	return err
}

func (m *Metered) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	start := time.Now()
	cr := &countingReader{r: r}
	var rd io.Reader = cr
	if sk, ok := r.(io.Seeker); ok {
		rd = &countingSeeker{cr, sk}
	}
	err := m.s.PutReader(ctx, key, rd, size)
	m.observe("put", start, err)
	if err == nil {
		// Bytes stored; retries below may have read the source more often.
		n := size
		if n < 0 {
			n = cr.n
		}
		m.bytes.WithLabelValues("write").Add(float64(n))
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type countingSeeker struct {
	*countingReader
	sk io.Seeker
}

func (c *countingSeeker) Seek(off int64, whence int) (int64, error) {
	pos, err := c.sk.Seek(off, whence)
	if err == nil && whence == io.SeekStart {
		c.n = off
	}
	return pos, err
}

func (m *Metered) Get(ctx context.Context, key string) ([]byte, error) {
	start := time.Now()
	b, err := m.s.Get(ctx, key)
	m.observe("get", start, err)
	m.bytes.WithLabelValues("read").Add(float64(len(b)))
	return b, err
}

func (m *Metered) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := m.s.GetRange(ctx, key, off, length)
	return m.reader(start, rc, err)
}

func (m *Metered) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := m.s.NewReader(ctx, key)
	return m.reader(start, rc, err)
}

func (m *Metered) reader(start time.Time, rc io.ReadCloser, err error) (io.ReadCloser, error) {
	if err != nil {
		m.observe("read", start, err)
		return nil, err
	}
	return &meteredRC{m: m, rc: rc, start: start}, nil
}

// meteredRC counts bytes as they are read and records the operation when
// closed, with the first read error (if any) as its result.
type meteredRC struct {
	m     *Metered
	rc    io.ReadCloser
	start time.Time
	err   error
	once  sync.Once
}

func (r *meteredRC) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.m.bytes.WithLabelValues("read").Add(float64(n))
	}
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

func (r *meteredRC) Close() error {
	err := r.rc.Close()
	r.once.Do(func() {
		res := r.err
		if res == nil {
			res = err
		}
		r.m.observe("read", r.start, res)
	})
	return err
}

func (m *Metered) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	start := time.Now()
	err := m.s.List(ctx, prefix, fn)
	m.observe("list", start, err)
	return err
}

func (m *Metered) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := m.s.Delete(ctx, key)
	m.observe("delete", start, err)
	return err
}

func (m *Metered) Exists(ctx context.Context, key string) (bool, error) {
	start := time.Now()
	ok, err := m.s.Exists(ctx, key)
	m.observe("exists", start, err)
	return ok, err
}

func (m *Metered) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	start := time.Now()
	info, err := m.s.Stat(ctx, key)
	m.observe("stat", start, err)
	return info, err
}

func (m *Metered) CreateIfAbsent(ctx context.Context, key string, data []byte) error {
	start := time.Now()
	err := m.s.CreateIfAbsent(ctx, key, data)
	m.observe("create", start, err)
	if err == nil {
		m.bytes.WithLabelValues("write").Add(float64(len(data)))
	}
	return err
}

func (m *Metered) GetVersion(ctx context.Context, key string) ([]byte, Version, error) {
	start := time.Now()
	data, v, err := m.s.GetVersion(ctx, key)
	m.observe("get", start, err)
	if err == nil {
		m.bytes.WithLabelValues("read").Add(float64(len(data)))
	}
	return data, v, err
}

func (m *Metered) PutIfMatch(ctx context.Context, key string, data []byte, v Version) error {
	start := time.Now()
	err := m.s.PutIfMatch(ctx, key, data, v)
	m.observe("put", start, err)
	if err == nil {
		m.bytes.WithLabelValues("write").Add(float64(len(data)))
	}
	return err
}
