package coordinator

import (
	"encoding/hex"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// metrics of one coordinator. Per-task gauges are exported by the leader
// only and cleared when its term ends, so a standby exports none.
type metrics struct {
	isLeader     prometheus.Gauge
	tickDuration prometheus.Histogram
	tickErrors   prometheus.Counter
	snapshots    *prometheus.CounterVec
	snapshotTS   *prometheus.GaugeVec
	// retention (retention.go)
	truncations    *prometheus.CounterVec
	restorableFrom *prometheus.GaugeVec
	storageBytes   *prometheus.GaugeVec
	compactions    *prometheus.CounterVec
	compactedBytes prometheus.Counter
	terms          prometheus.Counter
	agentsUp       prometheus.Gauge
	agentsReg      prometheus.Gauge
	lag            *prometheus.GaugeVec
	checkpoint     *prometheus.GaugeVec
	uncovered      *prometheus.GaugeVec
	staleReports   *prometheus.GaugeVec
	taskFailed     *prometheus.GaugeVec
	taskPaused     *prometheus.GaugeVec
	safePoint      *prometheus.GaugeVec

	lockResolutions      *prometheus.CounterVec
	lockResolutionErrors *prometheus.CounterVec
	locksFound           *prometheus.CounterVec
	lockResolutionLast   *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pitr_coordinator_is_leader",
			Help: "1 while this coordinator is the elected leader, else 0.",
		}),
		tickDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pitr_coordinator_tick_duration_seconds",
			Help:    "Duration of one leader tick over every task (poll, compute, persist, GC hold).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_coordinator_snapshots_total",
			Help: "Scheduled snapshot backups taken by the leader, by result (ok, error, cancelled).",
		}, []string{"result"}),
		snapshotTS: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_snapshot_backup_time_seconds",
			Help: "Backup time (unix seconds of its ts) of each task's newest snapshot known to the leader.",
		}, []string{"task"}),
		truncations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_coordinator_truncations_total",
			Help: "Retention runs of the leader (pitr truncate to now - keep), by result (ok, nothing, error, cancelled).",
		}, []string{"result"}),
		restorableFrom: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_restorable_from_seconds",
			Help: "Start of each task's restorable range (unix seconds) at the leader's last maintenance pass.",
		}, []string{"task"}),
		compactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_coordinator_compactions_total",
			Help: "Compaction runs of the leader's maintenance pass, by result (ok, nothing, busy, error).",
		}, []string{"result"}),
		compactedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_coordinator_compacted_bytes_total",
			Help: "Bytes of small data files the leader merged into compacted files.",
		}),
		storageBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_storage_bytes",
			Help: "Bytes each task's storage root holds, at the leader's last maintenance pass.",
		}, []string{"task"}),
		tickErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_coordinator_tick_errors_total",
			Help: "Ticks that failed (etcd, PD or storage errors).",
		}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pitr_coordinator_terms_total",
			Help: "Election terms this coordinator has led.",
		}),
		agentsUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pitr_coordinator_agents_up",
			Help: "Registered agents that answered the last poll (every registered one when no task runs, as none is polled).",
		}),
		agentsReg: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pitr_coordinator_agents_registered",
			Help: "Agents registered in etcd at the last tick.",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_checkpoint_lag_seconds",
			Help: "Wall-clock time minus the global checkpoint's time, per running task.",
		}, []string{"task"}),
		checkpoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_checkpoint_ts",
			Help: "The global checkpoint (TSO) per task.",
		}, []string{"task"}),
		uncovered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_uncovered_ranges",
			Help: "Task key ranges no current region report covers (each pins the checkpoint).",
		}, []string{"task"}),
		staleReports: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_stale_reports",
			Help: "Region reports dropped at the last tick because a newer epoch overlaps them.",
		}, []string{"task"}),
		taskFailed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_task_failed",
			Help: "1 for a task in the failed state, 0 for a live one.",
		}, []string{"task"}),
		taskPaused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_task_paused_seconds",
			Help: "How long a paused task has been paused (0 for a task in another state).",
		}, []string{"task"}),
		safePoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_gc_safepoint_ts",
			Help: "The PD service safepoint (TSO) the leader holds for the task; absent while none is held.",
		}, []string{"task"}),
		lockResolutions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_coordinator_lock_resolutions_total",
			Help: "Lock resolutions started on ranges whose checkpoint lagged more than resolve-locks-after, per task.",
		}, []string{"task"}),
		lockResolutionErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_coordinator_lock_resolution_errors_total",
			Help: "Lock resolutions that failed, per task.",
		}, []string{"task"}),
		locksFound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pitr_coordinator_locks_found_total",
			Help: "Locks the lock resolutions found (resolved, or left to live transactions), per task.",
		}, []string{"task"}),
		lockResolutionLast: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pitr_coordinator_lock_resolution_last_timestamp_seconds",
			Help: "Unix time the task's last lock resolution ended, labelled with its range (hex raw keys; one series per task).",
		}, []string{"task", "start_key", "end_key"}),
	}
	for _, c := range []prometheus.Collector{m.snapshots, m.snapshotTS, m.truncations, m.restorableFrom, m.storageBytes, m.compactions, m.compactedBytes, m.isLeader, m.tickDuration, m.tickErrors, m.terms, m.agentsUp, m.agentsReg,
		m.lag, m.checkpoint, m.uncovered, m.staleReports, m.taskFailed, m.taskPaused, m.safePoint,
		m.lockResolutions, m.lockResolutionErrors, m.locksFound, m.lockResolutionLast} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// RegisterMetrics registers a coordinator's metrics (its own and the
// storage ones) on reg, as New does; for tools and tests that list them.
func RegisterMetrics(reg prometheus.Registerer) error {
	if _, err := newMetrics(reg); err != nil {
		return err
	}
	_, err := storage.NewMetricsSet(reg, storage.MetricsOptions{})
	return err
}

// setTaskState records whether a task is failed and how long it has been
// paused (changedMs: unix ms of its last state change, 0 if unknown).
func (m *metrics) setTaskState(name string, state pitrpb.TaskState, changedMs int64, now time.Time) {
	failed, paused := 0.0, 0.0
	switch state {
	case pitrpb.TaskState_TASK_STATE_FAILED:
		failed = 1
	case pitrpb.TaskState_TASK_STATE_PAUSED:
		if changedMs > 0 {
			paused = max(0, now.Sub(time.UnixMilli(changedMs)).Seconds())
		}
	}
	m.taskFailed.WithLabelValues(name).Set(failed)
	m.taskPaused.WithLabelValues(name).Set(paused)
}

// setSafePoint records the service safepoint held for a task (0: none).
func (m *metrics) setSafePoint(name string, sp uint64) {
	if sp == 0 {
		m.safePoint.DeleteLabelValues(name)
		return
	}
	m.safePoint.WithLabelValues(name).Set(float64(sp))
}

// forget drops a task's series.
func (m *metrics) forget(name string) {
	for _, v := range []*prometheus.GaugeVec{m.lag, m.checkpoint, m.uncovered, m.staleReports, m.taskFailed, m.taskPaused, m.safePoint, m.restorableFrom, m.storageBytes, m.snapshotTS} {
		v.DeleteLabelValues(name)
	}
	for _, v := range []*prometheus.CounterVec{m.lockResolutions, m.lockResolutionErrors, m.locksFound} {
		v.DeleteLabelValues(name)
	}
	m.lockResolutionLast.DeletePartialMatch(prometheus.Labels{"task": name})
}

// setLastLockResolution records the end of a task's last lock resolution,
// keeping one series per task.
func (m *metrics) setLastLockResolution(name string, r keyspace.Range, end time.Time) {
	m.lockResolutionLast.DeletePartialMatch(prometheus.Labels{"task": name})
	m.lockResolutionLast.WithLabelValues(name, hex.EncodeToString(r.Start), hex.EncodeToString(r.End)).Set(float64(end.UnixMilli()) / 1000)
}

// resetTasks drops every per-task series (the term ended).
func (m *metrics) resetTasks() {
	for _, v := range []*prometheus.GaugeVec{m.lag, m.checkpoint, m.uncovered, m.staleReports, m.taskFailed, m.taskPaused, m.safePoint, m.lockResolutionLast} {
		v.Reset()
	}
	for _, v := range []*prometheus.CounterVec{m.lockResolutions, m.lockResolutionErrors, m.locksFound} {
		v.Reset()
	}
	m.agentsUp.Set(0)
	m.agentsReg.Set(0)
}
