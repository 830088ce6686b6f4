package coordinator

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// TestAlertRulesUseExportedMetrics: every pitr_coordinator_* series the
// example alert rules in deploy/ query is one the coordinator exports.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	require.NoError(t, err)
	m.lag.WithLabelValues("t").Set(1) // vectors appear once they have a series
	m.checkpoint.WithLabelValues("t").Set(1)
	m.uncovered.WithLabelValues("t").Set(1)
	m.staleReports.WithLabelValues("t").Set(1)
	m.taskFailed.WithLabelValues("t").Set(1)
	m.taskPaused.WithLabelValues("t").Set(1)
	m.safePoint.WithLabelValues("t").Set(1)
	m.snapshotTS.WithLabelValues("t").Set(1)
	m.snapshots.WithLabelValues("ok").Inc()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	rules, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "pitr-alerts.yml"))
	require.NoError(t, err)
	used := regexp.MustCompile(`pitr_coordinator_[a-z_]+`).FindAllString(string(rules), -1)
	require.NotEmpty(t, used)
	for _, name := range used {
		require.True(t, exported[name], "alert rules use %s, which the coordinator does not export", name)
	}
	for _, want := range []string{"pitr_coordinator_checkpoint_lag_seconds", "pitr_coordinator_uncovered_ranges",
		"pitr_coordinator_is_leader", "pitr_coordinator_task_failed"} {
		require.Contains(t, used, want)
	}
}

// TestTaskStateMetrics: the paused and safepoint gauges follow the task.
func TestTaskStateMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	require.NoError(t, err)
	now := time.UnixMilli(1_700_000_000_000)
	paused := now.Add(-3 * time.Hour).UnixMilli()

	m.setTaskState("p", pitrpb.TaskState_TASK_STATE_PAUSED, paused, now)
	m.setTaskState("u", pitrpb.TaskState_TASK_STATE_PAUSED, 0, now) // change time unknown
	m.setTaskState("r", pitrpb.TaskState_TASK_STATE_RUNNING, paused, now)
	m.setTaskState("f", pitrpb.TaskState_TASK_STATE_FAILED, paused, now)
	require.Equal(t, 3*time.Hour.Seconds(), testutil.ToFloat64(m.taskPaused.WithLabelValues("p")))
	require.Zero(t, testutil.ToFloat64(m.taskPaused.WithLabelValues("u")))
	require.Zero(t, testutil.ToFloat64(m.taskPaused.WithLabelValues("r")))
	require.Zero(t, testutil.ToFloat64(m.taskPaused.WithLabelValues("f")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.taskFailed.WithLabelValues("f")))
	require.Zero(t, testutil.ToFloat64(m.taskFailed.WithLabelValues("p")))

	m.setSafePoint("r", 42<<18)
	require.Equal(t, float64(42<<18), testutil.ToFloat64(m.safePoint.WithLabelValues("r")))
	m.setSafePoint("r", 0) // no longer held: the series goes
	require.Zero(t, testutil.CollectAndCount(m.safePoint))

	m.setSafePoint("r", 1)
	m.forget("r")
	require.Zero(t, testutil.CollectAndCount(m.safePoint))
}
