package check

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// pod is one pod's containers and volumes, from a workload's template or
// a TidbCluster's TiKV sidecars.
type pod struct {
	Owner      string
	Labels     map[string]string
	Security   *corev1.PodSecurityContext
	Containers []corev1.Container
	Volumes    []corev1.Volume
}

func pods(objs []object) []pod {
	var out []pod
	for _, o := range objs {
		switch v := o.Value.(type) {
		case *appsv1.Deployment:
			s := v.Spec.Template
			out = append(out, pod{o.Kind + "/" + o.Name, s.Labels, s.Spec.SecurityContext, s.Spec.Containers, s.Spec.Volumes})
		case *appsv1.StatefulSet:
			s := v.Spec.Template
			out = append(out, pod{o.Kind + "/" + o.Name, s.Labels, s.Spec.SecurityContext, s.Spec.Containers, s.Spec.Volumes})
		case *tidbCluster:
			// The Operator runs these in each TiKV pod, whose pod-level
			// securityContext we do not set: every sidecar sets its own.
			out = append(out, pod{Owner: o.Kind + "/" + o.Name, Labels: map[string]string{
				"app.kubernetes.io/component": "tikv", "app.kubernetes.io/instance": v.Name,
			}, Containers: v.TiKV.AdditionalContainers, Volumes: v.TiKV.AdditionalVolumes})
		}
	}
	return out
}

// credential matches a key or a `name = value` / `name: value` line that
// looks like a secret.
var credential = regexp.MustCompile(`(?i)(aws_secret_access_key|aws_session_token|secret[_-]?key|access[_-]?key|password|passwd|token|credential|\bkey)\s*[=:]`)

func checkInvariants(t *testing.T, objs []object) {
	cms := map[string]*corev1.ConfigMap{}
	for _, o := range objs {
		if cm, ok := o.Value.(*corev1.ConfigMap); ok {
			cms[cm.Name] = cm
			for k, v := range cm.Data {
				require.False(t, credential.MatchString(k+"="), "ConfigMap %s: key %q looks like a credential", cm.Name, k)
				for i, line := range strings.Split(v, "\n") {
					require.False(t, credential.MatchString(line), "ConfigMap %s %s:%d looks like a credential: %q", cm.Name, k, i+1, line)
				}
			}
		}
		if s, ok := o.Value.(*corev1.Secret); ok {
			t.Errorf("Secret %s is rendered: credentials are the user's, never in the manifests", s.Name)
		}
	}
	for _, p := range pods(objs) {
		vols := map[string]corev1.Volume{}
		for _, v := range p.Volumes {
			vols[v.Name] = v
			if v.ConfigMap != nil && len(cms) > 0 {
				require.Contains(t, cms, v.ConfigMap.Name, "%s: volume %s names a ConfigMap the build does not hold (name reference not rewritten?)", p.Owner, v.Name)
			}
		}
		for _, c := range p.Containers {
			where := fmt.Sprintf("%s container %s", p.Owner, c.Name)
			checkContainer(t, where, p, c)
			for _, m := range c.VolumeMounts {
				if _, ok := vols[m.Name]; !ok && p.Volumes != nil && !strings.HasPrefix(p.Owner, "StatefulSet/") {
					t.Errorf("%s: mount %s has no volume", where, m.Name)
				}
			}
			if isAgent(c) {
				checkAgent(t, where, c, vols, cms)
			}
		}
	}
}

func checkContainer(t *testing.T, where string, p pod, c corev1.Container) {
	req, lim := c.Resources.Requests, c.Resources.Limits
	require.False(t, req.Cpu().IsZero(), "%s: no cpu request", where)
	require.False(t, req.Memory().IsZero(), "%s: no memory request", where)
	require.False(t, lim.Memory().IsZero(), "%s: no memory limit", where)
	require.NotNil(t, c.ReadinessProbe, "%s: no readiness probe", where)
	require.NotNil(t, c.LivenessProbe, "%s: no liveness probe", where)
	for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		var port intstr.IntOrString
		switch {
		case pr.HTTPGet != nil:
			port = pr.HTTPGet.Port
		case pr.TCPSocket != nil:
			port = pr.TCPSocket.Port
		default:
			t.Errorf("%s: probe is neither httpGet nor tcpSocket", where)
			continue
		}
		require.True(t, hasPort(c, port), "%s: probe port %s is not a port of the container", where, port.String())
	}
	sc := c.SecurityContext
	require.NotNil(t, sc, "%s: no securityContext", where)
	nonRoot := sc.RunAsNonRoot != nil && *sc.RunAsNonRoot
	if p.Security != nil && p.Security.RunAsNonRoot != nil && *p.Security.RunAsNonRoot {
		nonRoot = true
	}
	require.True(t, nonRoot, "%s: runAsNonRoot is not set", where)
	uid := sc.RunAsUser
	if uid == nil && p.Security != nil {
		uid = p.Security.RunAsUser
	}
	require.True(t, uid != nil && *uid != 0, "%s: no non-zero runAsUser (an image's USER root fails runAsNonRoot at start)", where)
	require.True(t, sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, "%s: root filesystem is writable", where)
	require.True(t, sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation is not false", where)
	require.True(t, sc.Capabilities != nil && len(sc.Capabilities.Drop) == 1 && sc.Capabilities.Drop[0] == "ALL" && len(sc.Capabilities.Add) == 0,
		"%s: capabilities must drop ALL and add none", where)
	require.Contains(t, c.Image, ":", "%s: image %q has no tag: the kustomize images transformer did not reach it", where, c.Image)
}

func hasPort(c corev1.Container, p intstr.IntOrString) bool {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return true
		}
	}
	return false
}

func isAgent(c corev1.Container) bool { return len(c.Args) > 0 && c.Args[0] == "agent" }

// flagValue returns --name's value in args (--name=v or --name v).
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// agentFile is the part of agent.toml the checks read.
type agentFile struct {
	DataDir     string `toml:"data-dir"`
	SpillBudget string `toml:"spill-budget"`
}

func checkAgent(t *testing.T, where string, c corev1.Container, vols map[string]corev1.Volume, cms map[string]*corev1.ConfigMap) {
	ports := map[int32]string{}
	for _, p := range c.Ports {
		require.NotEmpty(t, p.Name, "%s: port %d has no name (the PodMonitor scrapes by name)", where, p.ContainerPort)
		require.LessOrEqual(t, len(p.Name), 15, "%s: port name %q is longer than 15", where, p.Name)
		ports[p.ContainerPort] = p.Name
	}
	require.Contains(t, ports, int32(9595), "%s: no gRPC port", where)
	require.Contains(t, ports, int32(9596), "%s: no metrics port", where)

	// Reachable from the coordinator: listening on the pod's interfaces,
	// registering an address it can dial.
	listen, _ := flagValue(c.Args, "listen")
	require.True(t, strings.HasPrefix(listen, "0.0.0.0:"), "%s: --listen %q: the coordinator cannot reach a loopback listener", where, listen)
	adv, ok := flagValue(c.Args, "advertise")
	require.True(t, ok, "%s: no --advertise: the agent would register 0.0.0.0", where)
	require.True(t, strings.Contains(adv, "$(POD_IP)") || strings.Contains(adv, "$(POD_NAME)"), "%s: --advertise %q is not this pod's address", where, adv)
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
		if e.Value != "" {
			require.False(t, credential.MatchString(e.Name+"="), "%s: env %s holds a literal credential; use secretKeyRef", where, e.Name)
		}
	}
	for _, ref := range regexp.MustCompile(`\$\((\w+)\)`).FindAllStringSubmatch(strings.Join(c.Args, " "), -1) {
		require.True(t, env[ref[1]], "%s: args use $(%s), which env does not define", where, ref[1])
	}
	tikv, _ := flagValue(c.Args, "tikv")
	require.Equal(t, "auto", tikv, "%s: --tikv", where)

	// The spill directory is a bounded emptyDir, larger than spill-budget.
	var cfg agentFile
	if path, ok := flagValue(c.Args, "config"); ok && len(cms) > 0 {
		var cm *corev1.ConfigMap
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(path, m.MountPath+"/") && vols[m.Name].ConfigMap != nil {
				cm = cms[vols[m.Name].ConfigMap.Name]
			}
		}
		require.NotNil(t, cm, "%s: --config %s is not on a mounted ConfigMap", where, path)
		body, ok := cm.Data[path[strings.LastIndex(path, "/")+1:]]
		require.True(t, ok, "%s: ConfigMap %s has no %s", where, cm.Name, path)
		md, err := toml.Decode(body, &cfg)
		require.NoError(t, err)
		_ = md
	}
	if v, ok := flagValue(c.Args, "data-dir"); ok {
		cfg.DataDir = v
	}
	require.NotEmpty(t, cfg.DataDir, "%s: no data-dir (the default is under /tmp, on the read-only root)", where)
	var spill *corev1.Volume
	for _, m := range c.VolumeMounts {
		if m.MountPath == cfg.DataDir {
			v := vols[m.Name]
			spill = &v
			require.False(t, m.ReadOnly, "%s: spill mount is read-only", where)
		}
	}
	require.NotNil(t, spill, "%s: data-dir %s is not a mounted volume", where, cfg.DataDir)
	require.NotNil(t, spill.EmptyDir, "%s: spill volume %s is not an emptyDir", where, spill.Name)
	require.NotNil(t, spill.EmptyDir.SizeLimit, "%s: spill volume %s has no sizeLimit", where, spill.Name)
	if cfg.SpillBudget != "" {
		budget, err := parseSize(cfg.SpillBudget)
		require.NoError(t, err)
		require.Greater(t, spill.EmptyDir.SizeLimit.Value(), budget, "%s: sizeLimit %s is not above spill-budget %s: the kubelet would evict the pod", where, spill.EmptyDir.SizeLimit, cfg.SpillBudget)
	}
}

// parseSize reads the agent's KiB/MiB/GiB sizes.
func parseSize(s string) (int64, error) {
	q, err := resource.ParseQuantity(strings.TrimSuffix(strings.TrimSuffix(s, "B"), "b"))
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return q.Value(), nil
}

// requireAgent: the overlay runs the agent, and its monitor scrapes it.
func requireAgent(t *testing.T, objs []object) {
	var agents []pod
	for _, p := range pods(objs) {
		for _, c := range p.Containers {
			if isAgent(c) {
				agents = append(agents, p)
			}
		}
	}
	require.Len(t, agents, 1, "one workload runs the agent")
	var found bool
	for _, o := range objs {
		pm, ok := o.Value.(*monitoringv1.PodMonitor)
		if !ok {
			continue
		}
		found = true
		for k, v := range pm.Spec.Selector.MatchLabels {
			require.Equal(t, v, agents[0].Labels[k], "PodMonitor %s selects %s=%s, which the agent's pods lack", pm.Name, k, v)
		}
		for _, ep := range pm.Spec.PodMetricsEndpoints {
			require.NotNil(t, ep.Port)
			var named bool
			for _, c := range agents[0].Containers {
				named = named || hasPort(c, intstr.FromString(*ep.Port))
			}
			require.True(t, named, "PodMonitor %s scrapes port %q, which no container has", pm.Name, *ep.Port)
		}
	}
	require.True(t, found, "no PodMonitor for the agent")
}
