package flush

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one Flusher. No constant labels: an agent running several
// tasks wraps its registerer (prometheus.WrapRegistererWith) per task.
type metrics struct {
	memory   prometheus.Gauge
	spilled  prometheus.Gauge
	buffered prometheus.Gauge

	duration     *prometheus.HistogramVec
	rows         prometheus.Counter
	logicalBytes prometheus.Counter
	fileBytes    prometheus.Counter
	files        prometheus.Counter
	uploadErrors prometheus.Counter
	spills       prometheus.Counter
	spillBytes   prometheus.Counter
	blocked      prometheus.Counter

	reg        prometheus.Registerer
	collectors []prometheus.Collector
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		memory: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pitr_flush_memory_bytes",
			Help: "Bytes of buffered rows held in memory (accounted size), including a running flush.",
		}),
		spilled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pitr_flush_spilled_bytes",
			Help: "Bytes of spill runs on local disk, including runs being written.",
		}),
		buffered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pitr_flush_buffered_logical_bytes",
			Help: "Logical bytes (key+value) added and not yet taken by a flush.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pitr_flush_duration_seconds",
			Help:    "Duration of Flush calls, from cut to stored meta, by result (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10 ms .. ~82 s
		}, []string{"result"}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_rows_total",
			Help: "Rows written to data files referenced by a stored meta.",
		}),
		logicalBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_logical_bytes_total",
			Help: "Logical bytes (key+value) written to data files referenced by a stored meta.",
		}),
		fileBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_file_bytes_total",
			Help: "Bytes of data files referenced by a stored meta.",
		}),
		files: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_files_total",
			Help: "Data files referenced by a stored meta.",
		}),
		uploadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_upload_errors_total",
			Help: "Failed uploads of data files and metas.",
		}),
		spills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_spills_total",
			Help: "Spill runs written to local disk.",
		}),
		spillBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_spill_bytes_total",
			Help: "Bytes of spill runs written to local disk.",
		}),
		blocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_flush_add_blocked_seconds_total",
			Help: "Time Add spent blocked because the memory and spill budgets were exhausted (backpressure).",
		}),
		reg: reg,
	}
	m.collectors = []prometheus.Collector{m.memory, m.spilled, m.buffered, m.duration, m.rows, m.logicalBytes,
		m.fileBytes, m.files, m.uploadErrors, m.spills, m.spillBytes, m.blocked}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register flush metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

// RegisterMetrics registers a Flusher's metrics on reg, as New does; for
// tools and tests that list them.
func RegisterMetrics(reg prometheus.Registerer) error {
	_, err := newMetrics(reg)
	return err
}
