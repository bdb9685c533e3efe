package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func TestChartDefaults(t *testing.T) {
	objs := renderDefault(t)

	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "handoff-manager").decode(t, &d)
	checkManager(t, d, "handoff-manager", chartAgentSelector)
	var ds appsv1.DaemonSet
	mustFind(t, objs, "DaemonSet", "handoff-nodeagent").decode(t, &ds)
	checkNodeAgent(t, ds, "handoff-nodeagent")
	checkRBAC(t, objs, "handoff", "handoff-system")
	checkCRD(t, objs)
	checkImages(t, objs, "0.1.0") // the chart's appVersion

	for _, o := range objs {
		namespaced := !slices.Contains([]string{"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}, o.Kind)
		if namespaced && o.Namespace != "handoff-system" {
			t.Errorf("%s is in namespace %q, want the release's", o.key(), o.Namespace)
		}
		if !namespaced && o.Namespace != "" {
			t.Errorf("cluster-scoped %s has namespace %q", o.key(), o.Namespace)
		}
	}
}

func TestChartCRDsDisabled(t *testing.T) {
	objs := renderDefault(t, "crds.enabled=false")
	if crds := kinds(objs, "CustomResourceDefinition"); len(crds) != 0 {
		t.Errorf("crds.enabled=false still renders %d CRDs", len(crds))
	}
	mustFind(t, objs, "Deployment", "handoff-manager")
	mustFind(t, objs, "DaemonSet", "handoff-nodeagent")
	if n := len(kinds(renderDefault(t), "CustomResourceDefinition")); n != 1 {
		t.Errorf("default values render %d CRDs, want 1", n)
	}
}

func TestChartCRDsKeep(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		keep bool
	}{
		{nil, true}, // the default keeps Migrations through an uninstall
		{[]string{"crds.keep=true"}, true},
		{[]string{"crds.keep=false"}, false},
	} {
		crd := checkCRD(t, renderDefault(t, tc.sets...))
		v, ok := crd.Annotations["helm.sh/resource-policy"]
		if tc.keep && v != "keep" {
			t.Errorf("%q: CRD annotation helm.sh/resource-policy=%q, want keep", tc.sets, v)
		}
		if !tc.keep && ok {
			t.Errorf("%q: CRD has helm.sh/resource-policy=%q, want none", tc.sets, v)
		}
		if crd.Labels["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("%q: CRD labels %v lack the chart's", tc.sets, crd.Labels)
		}
	}
}

func TestChartImage(t *testing.T) {
	objs := renderDefault(t, "image.tag=1.2.3-rc.1", "image.repository=registry.example/handoff")
	checkImages(t, objs, "1.2.3-rc.1")
	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "handoff-manager").decode(t, &d)
	var ds appsv1.DaemonSet
	mustFind(t, objs, "DaemonSet", "handoff-nodeagent").decode(t, &ds)
	for _, img := range []string{d.Spec.Template.Spec.Containers[0].Image, ds.Spec.Template.Spec.Containers[0].Image} {
		if img != "registry.example/handoff:1.2.3-rc.1" {
			t.Errorf("image %q, want registry.example/handoff:1.2.3-rc.1 on both workloads", img)
		}
	}
}

func TestChartPullPolicyAndTags(t *testing.T) {
	for _, sets := range [][]string{
		nil,
		{"image.tag=v0.2.0"},
		{"crds.enabled=false", "rbac.create=false", "metrics.enabled=false"},
		{"manager.leaderElect=false"},
		{"manager.replicas=2"},
	} {
		checkImages(t, renderDefault(t, sets...), "")
	}
}

func TestChartRefusesLatestAndTypos(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"image.tag=latest", "/image/tag"},
		{"image.pullPolicy=Sometimes", "/image/pullPolicy"},
		{"manager.replica=2", "replica"},
		{"nodeAgent.socketDir=run/handoff", "/nodeAgent/socketDir"},
		{"metrics.nodeAgentPort=0", "/metrics/nodeAgentPort"},
	} {
		_, err := renderChart(renderOptions{Chart: chartDir(), Values: values(t, tc.set)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %s: error %v, want one naming %s", tc.set, err, tc.want)
		}
	}
}

func TestChartLintStrict(t *testing.T) {
	for _, sets := range [][]string{
		nil,
		{"crds.enabled=false", "rbac.create=false", "metrics.enabled=false", "manager.leaderElect=false"},
		{"image.pullSecrets[0]=regcred", "manager.extraArgs[0]=--zap-log-level=debug", "nodeAgent.priorityClassName=system-node-critical"},
		{"webhook.enabled=false"},
		{"webhook.certManager.enabled=true", "webhook.port=10250", "webhook.timeoutSeconds=10"},
	} {
		msgs, err := lintChart(renderOptions{Chart: chartDir(), Values: values(t, sets...)})
		if err != nil {
			t.Errorf("lint --strict with %q: %v\n%s", sets, err, strings.Join(msgs, "\n"))
		}
	}
}

// TestLintStrictCatchesBrokenChart shows the lint above can fail: the same
// chart with one template that renders invalid YAML.
func TestLintStrictCatchesBrokenChart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "handoff")
	if err := os.CopyFS(dir, os.DirFS(chartDir())); err != nil {
		t.Fatal(err)
	}
	bad := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n data: [\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "broken.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := lintChart(renderOptions{Chart: dir}); err == nil {
		t.Fatalf("lint --strict passed a chart with an invalid template")
	}
}

func TestChartRBACDisabled(t *testing.T) {
	objs := renderDefault(t, "rbac.create=false")
	for _, k := range []string{"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
		if n := len(kinds(objs, k)); n != 0 {
			t.Errorf("rbac.create=false renders %d %s", n, k)
		}
	}
	mustFind(t, objs, "ServiceAccount", "handoff-manager")
	mustFind(t, objs, "ServiceAccount", "handoff-nodeagent")
}

func TestChartMetricsDisabled(t *testing.T) {
	objs := renderDefault(t, "metrics.enabled=false")
	for _, s := range kinds(objs, "Service") {
		if strings.HasSuffix(s.Name, "-metrics") {
			t.Errorf("metrics.enabled=false renders Service %s", s.Name)
		}
	}
	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "handoff-manager").decode(t, &d)
	c := container(t, d.Spec.Template.Spec, "manager")
	if !slices.Contains(c.Args, "--metrics-bind-address=0") {
		t.Errorf("manager args %q do not turn metrics off", c.Args)
	}
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			t.Errorf("manager still declares a metrics port")
		}
	}
	// The agent's /healthz shares its metrics listener: it stays.
	var ds appsv1.DaemonSet
	mustFind(t, objs, "DaemonSet", "handoff-nodeagent").decode(t, &ds)
	checkNodeAgent(t, ds, "handoff-nodeagent")
}

// TestChartOtherRelease checks that names and the bindings' subjects follow
// the release name and namespace together.
func TestChartOtherRelease(t *testing.T) {
	rel := renderRelease(t, "edge", "ops")
	objs := parseObjects(t, "release edge", []byte(rel.Manifest))
	checkRBAC(t, objs, "edge-handoff", "ops")
	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "edge-handoff-manager").decode(t, &d)
	if d.Spec.Template.Spec.ServiceAccountName != "edge-handoff-manager" {
		t.Errorf("manager service account %q", d.Spec.Template.Spec.ServiceAccountName)
	}
	var ds appsv1.DaemonSet
	mustFind(t, objs, "DaemonSet", "edge-handoff-nodeagent").decode(t, &ds)
	if ds.Spec.Template.Spec.ServiceAccountName != "edge-handoff-nodeagent" {
		t.Errorf("node agent service account %q", ds.Spec.Template.Spec.ServiceAccountName)
	}
	if ds.Spec.Template.Labels["app.kubernetes.io/instance"] != "edge" {
		t.Errorf("node agent pod labels %v lack instance=edge", ds.Spec.Template.Labels)
	}
}

func TestChartSocketDir(t *testing.T) {
	objs := renderDefault(t, "nodeAgent.socketDir=/var/run/handoff/")
	var ds appsv1.DaemonSet
	mustFind(t, objs, "DaemonSet", "handoff-nodeagent").decode(t, &ds)
	spec := ds.Spec.Template.Spec
	c := container(t, spec, "nodeagent")
	if !slices.Contains(c.Args, "--socket=/var/run/handoff/agent.sock") {
		t.Errorf("node agent args %q", c.Args)
	}
	if spec.Volumes[0].HostPath == nil || spec.Volumes[0].HostPath.Path != "/var/run/handoff" || c.VolumeMounts[0].MountPath != "/var/run/handoff" {
		t.Errorf("socket directory: volume %+v mount %+v", spec.Volumes[0], c.VolumeMounts[0])
	}
}

// TestChartSocketGroup checks that nodeAgent.socketGroup becomes the
// agent's group, which its socket takes, and that NOTES.txt tells
// applications to join it; the default stays root's group.
func TestChartSocketGroup(t *testing.T) {
	for _, c := range []struct {
		set  []string
		want int64
	}{{nil, 0}, {[]string{"nodeAgent.socketGroup=2750"}, 2750}} {
		var ds appsv1.DaemonSet
		mustFind(t, renderDefault(t, c.set...), "DaemonSet", "handoff-nodeagent").decode(t, &ds)
		sc := container(t, ds.Spec.Template.Spec, "nodeagent").SecurityContext
		if sc == nil || sc.RunAsGroup == nil || *sc.RunAsGroup != c.want || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
			t.Errorf("%v: agent security context %+v; want uid 0, gid %d", c.set, sc, c.want)
		}
		notes := renderRelease(t, "handoff", "handoff-system", c.set...).Info.Notes
		if want := fmt.Sprintf("supplementalGroups: [%d]", c.want); !strings.Contains(notes, want) {
			t.Errorf("%v: NOTES.txt lacks %q:\n%s", c.set, want, notes)
		}
	}
}

func TestChartNotes(t *testing.T) {
	notes := renderRelease(t, "handoff", "handoff-system").Info.Notes
	for _, want := range []string{"kind: Migration", "kubectl get mig", "HANDOFF_SOCKET=/run/handoff/agent.sock", "rollout status daemonset/handoff-nodeagent"} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES.txt lacks %q:\n%s", want, notes)
		}
	}
	if notes := renderRelease(t, "handoff", "handoff-system", "crds.enabled=false").Info.Notes; !strings.Contains(notes, "did not install the Migration CRD") {
		t.Errorf("NOTES.txt with crds.enabled=false does not say the CRD is missing:\n%s", notes)
	}
}

// TestChartMatchesKustomize checks that the chart, rendered as release
// "handoff" in handoff-system, installs the same objects as config/default
// with the same pod specs, ports and rules; only labels differ.
func TestChartMatchesKustomize(t *testing.T) {
	chart := renderDefault(t)
	kust := buildDefaultKustomization(t)

	var ck, kk []string
	for _, o := range chart {
		ck = append(ck, o.key())
	}
	for _, o := range kust {
		if o.Kind != "Namespace" { // helm install --create-namespace makes it
			kk = append(kk, o.key())
		}
	}
	slices.Sort(ck)
	slices.Sort(kk)
	if !slices.Equal(ck, kk) {
		t.Fatalf("the chart renders %v\nconfig/default builds %v", ck, kk)
	}

	var cd, kd appsv1.Deployment
	mustFind(t, chart, "Deployment", "handoff-manager").decode(t, &cd)
	mustFind(t, kust, "Deployment", "handoff-manager").decode(t, &kd)
	if *cd.Spec.Replicas != *kd.Spec.Replicas {
		t.Errorf("manager replicas: chart %d, kustomize %d", *cd.Spec.Replicas, *kd.Spec.Replicas)
	}
	comparePodSpecs(t, "manager", cd.Spec.Template.Spec, kd.Spec.Template.Spec)

	var cds, kds appsv1.DaemonSet
	mustFind(t, chart, "DaemonSet", "handoff-nodeagent").decode(t, &cds)
	mustFind(t, kust, "DaemonSet", "handoff-nodeagent").decode(t, &kds)
	comparePodSpecs(t, "node agent", cds.Spec.Template.Spec, kds.Spec.Template.Spec)
	if !semanticEqual(cds.Spec.UpdateStrategy, kds.Spec.UpdateStrategy) {
		t.Errorf("node agent update strategy: chart %+v, kustomize %+v", cds.Spec.UpdateStrategy, kds.Spec.UpdateStrategy)
	}

	for _, name := range []string{"handoff-manager-metrics", "handoff-nodeagent-metrics", "handoff-webhook"} {
		var cs, ks corev1.Service
		mustFind(t, chart, "Service", name).decode(t, &cs)
		mustFind(t, kust, "Service", name).decode(t, &ks)
		if !semanticEqual(cs.Spec.Ports, ks.Spec.Ports) || cs.Spec.ClusterIP != ks.Spec.ClusterIP {
			t.Errorf("Service %s: chart %s\nkustomize %s", name, asYAML(cs.Spec), asYAML(ks.Spec))
		}
	}

	var cw, kw admissionregistrationv1.MutatingWebhookConfiguration
	mustFind(t, chart, "MutatingWebhookConfiguration", "handoff-webhook").decode(t, &cw)
	mustFind(t, kust, "MutatingWebhookConfiguration", "handoff-webhook").decode(t, &kw)
	if !semanticEqual(cw.Webhooks, kw.Webhooks) {
		t.Errorf("webhook entries: chart\n%s\nkustomize\n%s", asYAML(cw.Webhooks), asYAML(kw.Webhooks))
	}
	var cr, kr rbacv1.Role
	mustFind(t, chart, "Role", "handoff-manager-webhook-cert").decode(t, &cr)
	mustFind(t, kust, "Role", "handoff-manager-webhook-cert").decode(t, &kr)
	if !semanticEqual(cr.Rules, kr.Rules) {
		t.Errorf("webhook certificate Role: chart\n%s\nkustomize\n%s", asYAML(cr.Rules), asYAML(kr.Rules))
	}

	var cc, kc apiextensionsv1.CustomResourceDefinition
	mustFind(t, chart, "CustomResourceDefinition", "migrations.handoff.dev").decode(t, &cc)
	mustFind(t, kust, "CustomResourceDefinition", "migrations.handoff.dev").decode(t, &kc)
	if !semanticEqual(cc.Spec, kc.Spec) {
		t.Errorf("the chart's CRD differs from config/default's")
	}
	// Rules and bindings: checkRBAC holds both to the generated roles.
}

// chartAgentSelector is the one flag the chart adds to config/default's:
// the manager's default selector is right for config/default, not for every
// release (TestAgentSelectorFindsAgents).
const chartAgentSelector = "--agent-selector=app.kubernetes.io/name=handoff,app.kubernetes.io/instance=handoff,app.kubernetes.io/component=nodeagent"

func comparePodSpecs(t *testing.T, what string, chart, kust corev1.PodSpec) {
	t.Helper()
	chart = *chart.DeepCopy()
	for i := range chart.Containers {
		chart.Containers[i].Args = slices.DeleteFunc(chart.Containers[i].Args, func(a string) bool { return a == chartAgentSelector })
	}
	if !semanticEqual(chart, kust) {
		t.Errorf("%s pod spec: chart\n%s\nkustomize\n%s", what, asYAML(chart), asYAML(kust))
	}
}

func TestChartRefusesUnelectedReplicas(t *testing.T) {
	_, err := renderChart(renderOptions{Chart: chartDir(), Values: values(t, "manager.replicas=2", "manager.leaderElect=false")})
	if err == nil || !strings.Contains(err.Error(), "leaderElect") {
		t.Fatalf("two replicas without leader election: error %v, want one naming leaderElect", err)
	}
}

// TestAgentSelectorFindsAgents checks that the manager's --agent-selector
// (or its default, read from cmd/manager/main.go) selects the node agent's
// pods, and only one release's: a selector that misses them fails every
// Migration with AgentUnavailable.
func TestAgentSelectorFindsAgents(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(root, "cmd", "manager", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`flag\.String\(\s*"agent-selector",\s*"([^"]*)"`).FindSubmatch(src)
	if m == nil {
		t.Fatalf("cmd/manager/main.go defines no --agent-selector string flag")
	}
	def := string(m[1])

	type install struct {
		name string
		objs []object
	}
	ho := renderRelease(t, "ho", "ops", "nameOverride=ho")
	edge := renderRelease(t, "edge", "ops")
	installs := []install{
		{"config/default", buildDefaultKustomization(t)},
		{"chart", renderDefault(t)},
		{"chart nameOverride=ho", parseObjects(t, "release ho", []byte(ho.Manifest))},
		{"chart release edge", parseObjects(t, "release edge", []byte(edge.Manifest))},
	}
	agentPods := func(in install) labels.Set {
		ds := kinds(in.objs, "DaemonSet")
		if len(ds) != 1 {
			t.Fatalf("%s: %d DaemonSets", in.name, len(ds))
		}
		var d appsv1.DaemonSet
		ds[0].decode(t, &d)
		return labels.Set(d.Spec.Template.Labels)
	}
	selector := func(in install) labels.Selector {
		deps := kinds(in.objs, "Deployment")
		if len(deps) != 1 {
			t.Fatalf("%s: %d Deployments", in.name, len(deps))
		}
		var d appsv1.Deployment
		deps[0].decode(t, &d)
		expr := def
		for _, a := range container(t, d.Spec.Template.Spec, "manager").Args {
			if v, ok := strings.CutPrefix(a, "--agent-selector="); ok {
				expr = v
			}
		}
		sel, err := labels.Parse(expr)
		if err != nil || sel.Empty() {
			t.Fatalf("%s: agent selector %q: %v", in.name, expr, err)
		}
		return sel
	}
	for _, in := range installs {
		if sel := selector(in); !sel.Matches(agentPods(in)) {
			t.Errorf("%s: the manager's agent selector %q does not select the agent pods %v", in.name, sel, agentPods(in))
		}
	}
	if sel := selector(installs[1]); sel.Matches(agentPods(installs[3])) {
		t.Errorf("release handoff's agent selector %q also selects release edge's agents", sel)
	}
}
