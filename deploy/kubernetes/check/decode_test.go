package check

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
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
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"
)

// root is deploy/kubernetes.
const root = ".."

// object is one decoded manifest: its kind and name, and the typed value.
type object struct {
	Kind, Name string
	Value      any // *appsv1.Deployment, ..., or *tidbCluster
}

// strict decodes data (YAML or JSON) into v; a field v does not know fails.
func strict(data []byte, v any) error {
	return yaml.UnmarshalStrict(data, v)
}

// decodeObject decodes one Kubernetes object strictly into the Go type of
// its kind.
func decodeObject(data []byte) (object, error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return object{}, fmt.Errorf("decode header: %w", err)
	}
	want := map[string]string{
		"Deployment": "apps/v1", "StatefulSet": "apps/v1",
		"Service": "v1", "ConfigMap": "v1", "Secret": "v1", "ServiceAccount": "v1",
		"PodDisruptionBudget": "policy/v1",
		"ServiceMonitor":      "monitoring.coreos.com/v1", "PodMonitor": "monitoring.coreos.com/v1",
		"TidbCluster": "pingcap.com/v1alpha1",
	}
	if api, ok := want[head.Kind]; !ok {
		return object{}, fmt.Errorf("kind %q: no Go type to check it against (add one)", head.Kind)
	} else if head.APIVersion != api {
		return object{}, fmt.Errorf("%s %s: apiVersion %q, want %q", head.Kind, head.Metadata.Name, head.APIVersion, api)
	}
	var v any
	switch head.Kind {
	case "Deployment":
		v = &appsv1.Deployment{}
	case "StatefulSet":
		v = &appsv1.StatefulSet{}
	case "Service":
		v = &corev1.Service{}
	case "ConfigMap":
		v = &corev1.ConfigMap{}
	case "Secret":
		v = &corev1.Secret{}
	case "ServiceAccount":
		v = &corev1.ServiceAccount{}
	case "PodDisruptionBudget":
		v = &policyv1.PodDisruptionBudget{}
	case "ServiceMonitor":
		v = &monitoringv1.ServiceMonitor{}
	case "PodMonitor":
		v = &monitoringv1.PodMonitor{}
	case "TidbCluster":
		tc, err := decodeTidbCluster(data)
		if err != nil {
			return object{}, fmt.Errorf("TidbCluster %s: %w", head.Metadata.Name, err)
		}
		return object{Kind: head.Kind, Name: head.Metadata.Name, Value: tc}, nil
	}
	if err := strict(data, v); err != nil {
		return object{}, fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, err)
	}
	return object{Kind: head.Kind, Name: head.Metadata.Name, Value: v}, nil
}

// tidbCluster is the part of a TidbCluster the invariants read. Decoding
// fills it after the field-list check has passed.
type tidbCluster struct {
	Name string
	TiKV struct {
		AdditionalContainers   []corev1.Container   `json:"additionalContainers"`
		AdditionalVolumes      []corev1.Volume      `json:"additionalVolumes"`
		AdditionalVolumeMounts []corev1.VolumeMount `json:"additionalVolumeMounts"`
		ServiceAccount         string               `json:"serviceAccount"`
	}
	TLSCluster bool
}

// fieldList is testdata/tidbcluster-fields.txt: path → subtree type ("" for
// a scalar leaf).
func fieldList() (map[string]string, error) {
	f, err := os.Open("testdata/tidbcluster-fields.txt")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		w := strings.Fields(line)
		out[w[0]] = strings.Join(w[1:], " ")
	}
	return out, sc.Err()
}

var tidbFields map[string]string

// decodeTidbCluster checks every leaf path of data against the CRD field
// list, decodes the typed subtrees strictly, and returns what the
// invariants read.
func decodeTidbCluster(data []byte) (*tidbCluster, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	if err := walkFields("", doc, tidbFields); err != nil {
		return nil, err
	}
	var raw struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			TLSCluster struct {
				Enabled bool `json:"enabled"`
			} `json:"tlsCluster"`
			TiKV json.RawMessage `json:"tikv"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, err
	}
	tc := &tidbCluster{Name: raw.Metadata.Name, TLSCluster: raw.Spec.TLSCluster.Enabled}
	if raw.Spec.TiKV != nil {
		// Only the typed lists are decoded here; walkFields vetted the rest.
		if err := json.Unmarshal(raw.Spec.TiKV, &tc.TiKV); err != nil {
			return nil, err
		}
	}
	return tc, nil
}

// walkFields checks that every leaf under v (at path p) is in fields, and
// decodes a typed subtree strictly into its corev1 type.
func walkFields(p string, v any, fields map[string]string) error {
	if typ, ok := fields[p]; ok {
		sub, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var dst any
		switch typ {
		case "":
			if _, isMap := v.(map[string]any); isMap {
				return fmt.Errorf("field %s: listed as a scalar, holds an object", p)
			}
			return nil
		case "any":
			return nil
		case "container[]":
			dst = &[]corev1.Container{}
		case "volume[]":
			dst = &[]corev1.Volume{}
		case "volumeMount[]":
			dst = &[]corev1.VolumeMount{}
		default:
			return fmt.Errorf("field list: %s: unknown type %q", p, typ)
		}
		if err := strict(sub, dst); err != nil {
			return fmt.Errorf("field %s: %w", p, err)
		}
		return nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		return fmt.Errorf("field %s is not in TiDB Operator's TidbCluster CRD (testdata/tidbcluster-fields.txt)", p)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		q := k
		if p != "" {
			q = p + "." + k
		}
		if err := walkFields(q, m[k], fields); err != nil {
			return err
		}
	}
	return nil
}

// transformerConfig is a kustomize `configurations:` file: the field specs
// the image and name-reference transformers also visit.
type transformerConfig struct {
	Images        []types.FieldSpec `json:"images"`
	NameReference []struct {
		Kind       string            `json:"kind"`
		Version    string            `json:"version"`
		FieldSpecs []types.FieldSpec `json:"fieldSpecs"`
	} `json:"nameReference"`
}

// jsonPatchOp is one operation of a JSON 6902 patch file.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	From  string `json:"from,omitempty"`
	Value any    `json:"value,omitempty"`
}

// withoutDirectives drops the strategic-merge directives a patch file may
// hold ($patch, $retainKeys, $setElementOrder/..., $deleteFromPrimitiveList/...),
// which are no fields of the API type; the rest decodes strictly.
func withoutDirectives(doc []byte) ([]byte, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		return nil, err
	}
	var strip func(any)
	strip = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if strings.HasPrefix(k, "$") {
					delete(x, k)
					continue
				}
				strip(e)
			}
		case []any:
			for _, e := range x {
				strip(e)
			}
		}
	}
	strip(v)
	return json.Marshal(v)
}

// isSequence tells a YAML list (a JSON 6902 patch) from an object.
func isSequence(doc []byte) bool {
	var v any
	return yaml.Unmarshal(doc, &v) == nil && func() bool { _, ok := v.([]any); return ok }()
}

// yamlFiles lists every YAML file under root but the check module.
func yamlFiles(t testing.TB) []string {
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "check" {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			out = append(out, p)
		}
		return nil
	})
	require.NoError(t, err)
	require.NotEmpty(t, out)
	return out
}

// documents splits a multi-document YAML file.
func documents(data []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(data, []byte("\n---\n")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func stripComments(d []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(d, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// TestMain loads the TidbCluster field list once.
func TestMain(m *testing.M) {
	var err error
	if tidbFields, err = fieldList(); err != nil {
		fmt.Fprintln(os.Stderr, "load the TidbCluster field list:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestYAMLFilesDecode: every YAML file in the tree, kustomizations, patches,
// transformer configs and examples included, decodes strictly.
func TestYAMLFilesDecode(t *testing.T) {
	for _, p := range yamlFiles(t) {
		t.Run(p, func(t *testing.T) {
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			for i, doc := range documents(data) {
				switch filepath.Base(p) {
				case "kustomization.yaml":
					var k types.Kustomization
					require.NoError(t, strict(doc, &k), "document %d", i)
					require.Contains(t, []string{types.KustomizationKind, types.ComponentKind}, k.Kind)
				case "kustomizeconfig.yaml":
					var c transformerConfig
					require.NoError(t, strict(doc, &c), "document %d", i)
				default:
					if isSequence(doc) {
						var ops []jsonPatchOp
						require.NoError(t, strict(doc, &ops), "document %d: a JSON 6902 patch", i)
						for _, op := range ops {
							require.Contains(t, []string{"add", "remove", "replace", "move", "copy", "test"}, op.Op)
						}
						continue
					}
					doc, err := withoutDirectives(doc)
					require.NoError(t, err, "document %d", i)
					_, err = decodeObject(doc)
					require.NoError(t, err, "document %d", i)
				}
			}
		})
	}
}
