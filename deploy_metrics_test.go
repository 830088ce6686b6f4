package pitr_test

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/restore"
)

// describer is a Registerer that records the metric names of what is
// registered on it, from Describe (vectors without a series included).
type describer struct{ names map[string]bool }

func (d *describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqNameRe.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return nil
}

func (d *describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d *describer) Unregister(prometheus.Collector) bool { return true }

var fqNameRe = regexp.MustCompile(`fqName: "([^"]+)"`)

// exportedMetrics returns every metric name the agent, the coordinator and
// a restore export, with the series names a histogram adds.
func exportedMetrics(t *testing.T) map[string]bool {
	d := &describer{names: map[string]bool{}}
	require.NoError(t, agent.RegisterMetrics(d))
	require.NoError(t, coordinator.RegisterMetrics(d))
	require.NoError(t, restore.RegisterMetrics(d))
	out := map[string]bool{}
	for n := range d.names {
		out[n] = true
		// Describe does not tell histograms apart; a name with these
		// suffixes is only accepted if its base is exported.
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			out[n+s] = true
		}
	}
	require.Contains(t, out, "pitr_coordinator_checkpoint_lag_seconds")
	require.Contains(t, out, "pitr_flush_files_total")
	require.Contains(t, out, "pitr_storage_operations_total")
	return out
}

// TestDeployMetrics: the dashboard and the alert rules in deploy/ query only
// metrics pitr exports, and the dashboard is well formed.
func TestDeployMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	nameRe := regexp.MustCompile(`pitr_[a-z0-9_]+`)
	for _, f := range []string{"deploy/grafana/pitr.json", "deploy/prometheus/pitr-alerts.yml"} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		missing := map[string]bool{}
		used := nameRe.FindAllString(string(b), -1)
		require.NotEmpty(t, used, f)
		for _, n := range used {
			if !exported[n] {
				missing[n] = true
			}
		}
		var names []string
		for n := range missing {
			names = append(names, n)
		}
		sort.Strings(names)
		require.Empty(t, names, "%s uses metrics pitr does not export: %s", f, strings.Join(names, ", "))
	}

	b, err := os.ReadFile("deploy/grafana/pitr.json")
	require.NoError(t, err)
	var dash struct {
		SchemaVersion int `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	require.GreaterOrEqual(t, dash.SchemaVersion, 36)
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
	}
	require.Equal(t, map[string]string{"datasource": "datasource", "task": "query"}, vars)
	require.NotEmpty(t, dash.Panels)
	for _, p := range dash.Panels {
		require.NotNil(t, p.Datasource, "panel %q has no datasource", p.Title)
		require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no target", p.Title)
		for _, tg := range p.Targets {
			require.NotEmpty(t, tg.Expr, "panel %q has an empty target", p.Title)
		}
	}
}
