package agent

import (
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/storage"
)

// Event kinds counted by pitr_agent_events_total.
const (
	evPrewrite = iota
	evCommit
	evCommitted
	evRollback
	evInitialized
	evResolved
	evError
	evOther
	numEvents
)

var eventNames = [numEvents]string{"prewrite", "commit", "committed", "rollback", "initialized", "resolved_ts", "error", "other"}

// metrics of one agent. The flushers of its tasks register theirs
// (pitr_flush_*) on the same registerer with a "task" label: buffer and
// spill bytes, flush files and bytes.
type metrics struct {
	events          [numEvents]prometheus.Counter
	receivedBytes   prometheus.Counter
	capturedRows    prometheus.Counter
	capturedBytes   prometheus.Counter
	flushDuration   prometheus.Histogram
	flushes         *prometheus.CounterVec
	regionLag       prometheus.Histogram
	resubscribes    *prometheus.CounterVec
	subscribes      prometheus.Counter
	streamErrors    prometheus.Counter
	protocolErrors  prometheus.Counter
	droppedCommits  prometheus.Counter
	captureRestarts prometheus.Counter
	backupRanges    *prometheus.CounterVec
	backupBytes     prometheus.Counter

	prewriteReleases prometheus.Counter
	prewriteKept     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, a *Agent) (*metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pitr_agent_events_total",
		Help: "Change stream rows and messages received, by kind.",
	}, []string{"kind"})
	m := &metrics{
		receivedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_received_bytes_total",
			Help: "Key, value and old value bytes of the rows received from the change stream.",
		}),
		capturedRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_captured_rows_total",
			Help: "Committed changes handed to flush.",
		}),
		capturedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_captured_bytes_total",
			Help: "Key and value bytes of the committed changes handed to flush.",
		}),
		flushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pitr_agent_flush_duration_seconds",
			Help:    "Duration of flush cuts, from freeze to stored meta.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_agent_flushes_total",
			Help: "Flush cuts, by result.",
		}, []string{"result"}),
		regionLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pitr_agent_region_lag_seconds",
			Help:    "Per region, after each flush: now minus the physical time of its flushed checkpoint.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
		}),
		resubscribes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_agent_subscription_errors_total",
			Help: "Subscriptions ended by TiKV, by error.",
		}, []string{"error"}),
		subscribes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_subscribes_total",
			Help: "Region subscriptions registered on EventFeed.",
		}),
		streamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_stream_errors_total",
			Help: "EventFeed streams that broke.",
		}),
		protocolErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_protocol_errors_total",
			Help: "Rows that broke the change stream protocol (commit without prewrite after initialized, rows at or below a resolved ts).",
		}),
		droppedCommits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_unmatched_commits_dropped_total",
			Help: "COMMIT rows received before INITIALIZED that still had no PREWRITE at INITIALIZED.",
		}),
		captureRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_capture_restarts_total",
			Help: "Task captures started again after a failure.",
		}),
		backupRanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_agent_backup_ranges_total",
			Help: "Snapshot backup ranges this agent scanned, by result (ok, error).",
		}, []string{"result"}),
		backupBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_backup_scanned_bytes_total",
			Help: "Key and value bytes read by snapshot backup scans.",
		}),
		prewriteReleases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_prewrite_budget_releases_total",
			Help: "Regions whose pending prewrites were dropped over the prewrite budget and subscribed again.",
		}),
		prewriteKept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_agent_prewrite_budget_kept_total",
			Help: "Regions kept over the prewrite budget (open transactions larger than the budget after a rescan).",
		}),
	}
	for i := range m.events {
		m.events[i] = events.WithLabelValues(eventNames[i])
	}
	gauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_regions_subscribed",
			Help: "Regions with a subscription (registered or initialized), all tasks.",
		}, func() float64 { s, _ := a.regionCounts(); return float64(s) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_regions_initialized",
			Help: "Regions whose incremental scan finished, all tasks.",
		}, func() float64 { _, i := a.regionCounts(); return float64(i) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_region_max_lag_seconds",
			Help: "Largest region lag (now minus flushed checkpoint) at the last flush, all tasks.",
		}, a.maxLag),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_buffered_bytes",
			Help: "Key and value bytes captured and not yet taken by a flush, all tasks.",
		}, func() float64 { b, _ := a.bufferStats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_spilled_bytes",
			Help: "Bytes of spill runs on local disk, all tasks.",
		}, func() float64 { _, s := a.bufferStats(); return float64(s) }),
	}
	gauges = append(gauges,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_upload_rate_limit_bytes",
			Help: "The upload rate limit over every task's storage, bytes per second (0: none).",
		}, func() float64 { return float64(a.UploadRateLimit()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_pending_prewrite_bytes",
			Help: "Accounted bytes of pending prewrites (transactions not yet committed), all tasks.",
		}, func() float64 { return float64(a.pending.counted.Load() + a.pending.exempt.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pitr_agent_pending_prewrite_over_budget_bytes",
			Help: "Of those, the bytes of the region kept over the prewrite budget.",
		}, func() float64 { return float64(a.pending.exempt.Load()) }),
	)
	cs := append([]prometheus.Collector{events, m.receivedBytes, m.capturedRows, m.capturedBytes, m.flushDuration,
		m.flushes, m.regionLag, m.resubscribes, m.subscribes, m.streamErrors, m.protocolErrors, m.droppedCommits,
		m.captureRestarts, m.prewriteReleases, m.prewriteKept, m.backupRanges, m.backupBytes}, gauges...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register agent metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) countRow(row *cdcpb.Event_Row) {
	k := evOther
	switch row.Type {
	case cdcpb.Event_PREWRITE:
		k = evPrewrite
	case cdcpb.Event_COMMIT:
		k = evCommit
	case cdcpb.Event_COMMITTED:
		k = evCommitted
	case cdcpb.Event_ROLLBACK:
		k = evRollback
	case cdcpb.Event_INITIALIZED:
		k = evInitialized
	}
	m.events[k].Inc()
	m.receivedBytes.Add(float64(len(row.Key) + len(row.Value) + len(row.OldValue)))
}

// RegisterMetrics registers the metrics an agent exports on reg: its own,
// those of a task's flusher and the storage ones, as a running agent does
// (the gauges read an agent with no tasks); for tools and tests that list
// them.
func RegisterMetrics(reg prometheus.Registerer) error {
	if _, err := newMetrics(reg, &Agent{}); err != nil {
		return err
	}
	if err := flush.RegisterMetrics(reg); err != nil {
		return err
	}
	_, err := storage.NewMetricsSet(reg, storage.MetricsOptions{})
	return err
}
