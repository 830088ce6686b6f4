package restore

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Restore metrics (Options.Metrics; `pitr restore --metrics-addr`): what
// the progress bar shows, for a dashboard. phase is plan (before the
// files are read), verify (their sha256) or restore (the writes).
var (
	descPhaseTotal = prometheus.NewDesc("pitr_restore_phase_bytes", "Bytes the current phase of the restore has to go through.", []string{"task", "phase"}, nil)
	descPhaseDone  = prometheus.NewDesc("pitr_restore_phase_done_bytes", "Bytes the current phase of the restore has gone through.", []string{"task", "phase"}, nil)
	descRows       = prometheus.NewDesc("pitr_restore_written_rows_total", "Versions written to the target.", []string{"task"}, nil)
	descBytes      = prometheus.NewDesc("pitr_restore_written_bytes_total", "Key and value bytes written to the target.", []string{"task"}, nil)
	descStarted    = prometheus.NewDesc("pitr_restore_start_time_seconds", "When the restore started (unix seconds).", []string{"task"}, nil)
)

// meterCollector exports a meter.
type meterCollector struct {
	m    *meter
	task string
}

func (c meterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPhaseTotal, descPhaseDone, descRows, descBytes, descStarted} {
		ch <- d
	}
}

func (c meterCollector) Collect(ch chan<- prometheus.Metric) {
	phase, _ := c.m.phase.Load().(string)
	if phase == "" {
		phase = "plan"
	}
	ch <- prometheus.MustNewConstMetric(descPhaseTotal, prometheus.GaugeValue, float64(c.m.total.Load()), c.task, phase)
	ch <- prometheus.MustNewConstMetric(descPhaseDone, prometheus.GaugeValue, float64(c.m.done.Load()), c.task, phase)
	ch <- prometheus.MustNewConstMetric(descRows, prometheus.CounterValue, float64(c.m.rows.Load()), c.task)
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(c.m.bytes.Load()), c.task)
	ch <- prometheus.MustNewConstMetric(descStarted, prometheus.GaugeValue, float64(c.m.start.UnixNano())/float64(time.Second), c.task)
}

// RegisterMetrics registers the restore's metric descriptions on reg, for
// tools that list what pitr exports; a running restore registers its own
// (Options.Metrics).
func RegisterMetrics(reg prometheus.Registerer) error {
	return reg.Register(meterCollector{m: newMeter()})
}
