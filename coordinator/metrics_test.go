package coordinator

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
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
