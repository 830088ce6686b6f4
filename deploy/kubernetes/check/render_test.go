package check

import (
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomizations lists every directory under root holding a
// kustomization.yaml: the bases and the overlays users build.
func kustomizations(t testing.TB) []string {
	var out []string
	for _, p := range yamlFiles(t) {
		if filepath.Base(p) == "kustomization.yaml" {
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
	for _, want := range []string{"base/coordinator", "base/agent", "operator", "statefulset"} {
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
		dir  string
		want []string // kind/name
	}{
		{"operator", []string{"Deployment/pitr-coordinator", "PodDisruptionBudget/pitr-coordinator", "Service/pitr-coordinator",
			"ServiceMonitor/pitr-coordinator", "PodMonitor/pitr-agent", "TidbCluster/basic", "ServiceAccount/pitr-coordinator"}},
		{"statefulset", []string{"Deployment/pitr-coordinator", "StatefulSet/tikv", "Service/tikv-peer", "PodMonitor/pitr-agent"}},
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
		})
	}
}
