package check

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// kustomizations lists every directory under root holding a
// kustomization.yaml: the bases and the overlays users build (components
// render only inside an overlay).
func kustomizations(t testing.TB) []string {
	var out []string
	for _, p := range yamlFiles(t) {
		if filepath.Base(p) != "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		var k types.Kustomization
		require.NoError(t, yaml.Unmarshal(data, &k), p)
		if k.Kind != types.ComponentKind {
			out = append(out, filepath.Dir(p))
		}
	}
	sort.Strings(out)
	return out
}

// render builds dir with the kustomize Go API, as `kustomize build` does,
// and decodes every object strictly.
func render(t testing.TB, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err, "kustomize build %s", dir)
	var out []object
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		require.NoError(t, err)
		o, err := decodeObject(y)
		require.NoError(t, err, "kustomize build %s", dir)
		out = append(out, o)
	}
	require.NotEmpty(t, out, "kustomize build %s rendered nothing", dir)
	return out
}

// TestRender: every kustomization renders, and what it renders decodes
// strictly and holds the invariants.
func TestRender(t *testing.T) {
	dirs := kustomizations(t)
	for _, want := range []string{"base/coordinator", "base/agent", "operator", "operator-workload-identity", "statefulset"} {
		require.Contains(t, dirs, filepath.Join(root, want))
	}
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			checkInvariants(t, render(t, dir))
		})
	}
}

// TestOverlays: what each overlay users apply must contain.
func TestOverlays(t *testing.T) {
	for _, tc := range []struct {
		dir      string
		want     []string // kind/name
		identity bool     // credentials from workload identity, not pitr-storage
	}{
		{"operator", []string{"Deployment/pitr-coordinator", "PodDisruptionBudget/pitr-coordinator", "Service/pitr-coordinator",
			"ServiceMonitor/pitr-coordinator", "PodMonitor/pitr-agent", "TidbCluster/basic", "ServiceAccount/pitr-coordinator"}, false},
		{"statefulset", []string{"Deployment/pitr-coordinator", "StatefulSet/tikv", "Service/tikv-peer", "PodMonitor/pitr-agent"}, false},
		{"operator-workload-identity", []string{"Deployment/pitr-coordinator", "TidbCluster/basic", "ServiceAccount/pitr-tikv"}, true},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			objs := render(t, filepath.Join(root, tc.dir))
			var got []string
			for _, o := range objs {
				got = append(got, o.Kind+"/"+o.Name)
			}
			for _, w := range tc.want {
				require.Contains(t, got, w)
			}
			requireAgent(t, objs)
			requireCoordinator(t, objs)
			requireCredentials(t, objs, tc.identity)
		})
	}
}

// requireCredentials: pitr containers read storage credentials from the
// pitr-storage Secret, or (identity) from none, with their pods'
// ServiceAccounts annotated for the cloud's workload identity.
func requireCredentials(t *testing.T, objs []object, identity bool) {
	accounts := map[string]*corev1.ServiceAccount{}
	for _, o := range objs {
		if sa, ok := o.Value.(*corev1.ServiceAccount); ok {
			accounts[sa.Name] = sa
		}
	}
	for _, o := range objs {
		var account string
		var ps []pod
		switch v := o.Value.(type) {
		case *appsv1.Deployment:
			account = v.Spec.Template.Spec.ServiceAccountName
			ps = pods([]object{o})
		case *tidbCluster:
			account = v.TiKV.ServiceAccount
			ps = pods([]object{o})
		}
		for _, p := range ps {
			for _, c := range p.Containers {
				if !strings.HasPrefix(c.Image, "pitr-io/pitr") {
					continue
				}
				var fromSecret []string
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "pitr-storage" {
						fromSecret = append(fromSecret, e.Name)
					}
				}
				where := p.Owner + " container " + c.Name
				if !identity {
					require.Subset(t, fromSecret, []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, "%s: storage credentials", where)
					continue
				}
				require.Empty(t, fromSecret, "%s: reads pitr-storage under workload identity", where)
				sa := accounts[account]
				require.NotNil(t, sa, "%s: ServiceAccount %q is not in the build", where, account)
				require.NotEmpty(t, sa.Annotations, "%s: ServiceAccount %s carries no workload identity", where, account)
			}
		}
	}
}

// requireCoordinator: two replicas (one leads, one stands by), a
// PodDisruptionBudget that keeps one, and a ServiceMonitor that reaches the
// metrics port through the Service.
func requireCoordinator(t *testing.T, objs []object) {
	byKind := map[string]object{}
	for _, o := range objs {
		if o.Name == "pitr-coordinator" {
			byKind[o.Kind] = o
		}
	}
	for _, k := range []string{"Deployment", "PodDisruptionBudget", "Service", "ServiceMonitor"} {
		require.Contains(t, byKind, k, "no %s/pitr-coordinator", k)
	}
	d := byKind["Deployment"].Value.(*appsv1.Deployment)
	require.NotNil(t, d.Spec.Replicas)
	require.GreaterOrEqual(t, *d.Spec.Replicas, int32(2), "a standby coordinator takes over from a dead leader")
	podLabels := d.Spec.Template.Labels
	matches := func(sel map[string]string, labels map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	pdb := byKind["PodDisruptionBudget"].Value.(*policyv1.PodDisruptionBudget)
	require.NotNil(t, pdb.Spec.MinAvailable)
	require.Equal(t, 1, pdb.Spec.MinAvailable.IntValue())
	require.True(t, matches(pdb.Spec.Selector.MatchLabels, podLabels), "the PodDisruptionBudget selects no coordinator pod")
	svc := byKind["Service"].Value.(*corev1.Service)
	require.True(t, matches(svc.Spec.Selector, podLabels), "the Service selects no coordinator pod")
	var port *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Name == "metrics" {
			port = &svc.Spec.Ports[i]
		}
	}
	require.NotNil(t, port, "the Service has no port named metrics")
	require.True(t, hasPort(d.Spec.Template.Spec.Containers[0], port.TargetPort), "the Service's metrics targetPort is no container port")
	sm := byKind["ServiceMonitor"].Value.(*monitoringv1.ServiceMonitor)
	require.True(t, matches(sm.Spec.Selector.MatchLabels, svc.Labels), "the ServiceMonitor selects no Service")
	require.NotEmpty(t, sm.Spec.Endpoints)
	for _, ep := range sm.Spec.Endpoints {
		require.Equal(t, "metrics", ep.Port)
	}
}
