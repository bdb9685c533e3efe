package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// root is the repository root; chartDir and the config paths hang off it.
var root string

func TestMain(m *testing.M) {
	r, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root = r
	os.Exit(m.Run())
}

func chartDir() string { return filepath.Join(root, "charts", "handoff") }

// object is one rendered document, with what identifies it.
type object struct {
	APIVersion string
	Kind       string
	Name       string
	Namespace  string
	Source     string // where it came from, for messages
	doc        []byte
}

func (o object) key() string { return o.Kind + "/" + o.Name }

// decode fills v from the document, refusing fields v does not know and
// duplicate fields, case-sensitively as the API server does (encoding/json
// would take readOnlyRootFileSystem for readOnlyRootFilesystem; the API
// server drops it with a warning, and the container runs writable).
func (o object) decode(t *testing.T, v any) {
	t.Helper()
	j, err := yaml.YAMLToJSON(o.doc)
	if err != nil {
		t.Fatalf("%s %s: %v", o.Source, o.key(), err)
	}
	strict, err := sigsjson.UnmarshalStrict(j, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		t.Fatalf("%s %s: %v", o.Source, o.key(), err)
	}
	if len(strict) > 0 {
		t.Fatalf("%s %s: %v", o.Source, o.key(), errors.Join(strict...))
	}
}

func parseObjects(t *testing.T, source string, stream []byte) []object {
	t.Helper()
	docs, err := splitDocuments(stream)
	if err != nil {
		t.Fatalf("%s: %v", source, err)
	}
	var objs []object
	for _, d := range docs {
		var h struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(d, &h); err != nil {
			t.Fatalf("%s: document %q: %v", source, firstLine(d), err)
		}
		if h.Kind == "" || h.APIVersion == "" || h.Metadata.Name == "" {
			t.Fatalf("%s: document without apiVersion, kind or name:\n%s", source, d)
		}
		objs = append(objs, object{APIVersion: h.APIVersion, Kind: h.Kind, Name: h.Metadata.Name, Namespace: h.Metadata.Namespace, Source: source, doc: d})
	}
	return objs
}

func find(objs []object, kind, name string) (object, bool) {
	for _, o := range objs {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return object{}, false
}

func mustFind(t *testing.T, objs []object, kind, name string) object {
	t.Helper()
	o, ok := find(objs, kind, name)
	if !ok {
		var have []string
		for _, o := range objs {
			have = append(have, o.key())
		}
		t.Fatalf("no %s/%s among %v", kind, name, have)
	}
	return o
}

func kinds(objs []object, kind string) []object {
	var out []object
	for _, o := range objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// values builds chart values from helm --set expressions.
func values(t *testing.T, sets ...string) map[string]any {
	t.Helper()
	vals, err := parseValues(nil, sets)
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

func renderRelease(t *testing.T, release, namespace string, sets ...string) *release.Release {
	t.Helper()
	rel, err := renderChart(renderOptions{Chart: chartDir(), Release: release, Namespace: namespace, Values: values(t, sets...)})
	if err != nil {
		t.Fatalf("render with %q: %v", sets, err)
	}
	return rel
}

// renderDefault renders release "handoff" in handoff-system, which names
// every object as config/default does.
func renderDefault(t *testing.T, sets ...string) []object {
	t.Helper()
	rel := renderRelease(t, "handoff", "handoff-system", sets...)
	return parseObjects(t, fmt.Sprintf("chart %q", sets), []byte(rel.Manifest))
}

func buildDefaultKustomization(t *testing.T) []object {
	t.Helper()
	out, err := buildKustomization(filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	return parseObjects(t, "config/default", out)
}

// readGenerated reads one of the files `make manifests` generates.
func readGenerated(t *testing.T, rel string) []object {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return parseObjects(t, rel, data)
}

func generatedRules(t *testing.T, component string) []rbacv1.PolicyRule {
	t.Helper()
	objs := readGenerated(t, "config/rbac/"+component+"/role.yaml")
	if len(objs) != 1 || objs[0].Kind != "ClusterRole" {
		t.Fatalf("config/rbac/%s/role.yaml: want one ClusterRole, have %d objects", component, len(objs))
	}
	var cr rbacv1.ClusterRole
	objs[0].decode(t, &cr)
	if len(cr.Rules) == 0 {
		t.Fatalf("config/rbac/%s/role.yaml has no rules", component)
	}
	return cr.Rules
}

func generatedCRD(t *testing.T) apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	objs := readGenerated(t, "config/crd/bases/handoff.dev_migrations.yaml")
	if len(objs) != 1 {
		t.Fatalf("config/crd/bases/handoff.dev_migrations.yaml: want one object, have %d", len(objs))
	}
	var crd apiextensionsv1.CustomResourceDefinition
	objs[0].decode(t, &crd)
	return crd
}

func asYAML(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%#v", v)
	}
	return string(b)
}

// semanticEqual compares API objects the way the API server would
// (quantities by value).
func semanticEqual(a, b any) bool { return equality.Semantic.DeepEqual(a, b) }

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q in the pod template", name)
	return corev1.Container{}
}

// checkSelector fails unless the selector picks the workload's own pods.
func checkSelector(t *testing.T, what string, sel map[string]string, podLabels map[string]string) {
	t.Helper()
	if len(sel) == 0 {
		t.Errorf("%s: empty selector", what)
	}
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("%s: selector %s=%s does not match the pod template's labels %v", what, k, v, podLabels)
		}
	}
}

// checkManager asserts what the brief and cmd/manager require of the
// manager Deployment; extraArgs are the args expected after the three
// every install passes and the webhook's (defaultWebhookArgs).
func checkManager(t *testing.T, d appsv1.Deployment, sa string, extraArgs ...string) {
	t.Helper()
	spec := d.Spec.Template.Spec
	checkSelector(t, "manager Deployment", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	if spec.ServiceAccountName != sa {
		t.Errorf("manager runs as service account %q, want %q", spec.ServiceAccountName, sa)
	}
	c := container(t, spec, "manager")
	if want := []string{"/manager"}; !slices.Equal(c.Command, want) {
		t.Errorf("manager command %q, want %q", c.Command, want)
	}
	if want := slices.Concat([]string{"--leader-elect", "--health-probe-bind-address=:8081", "--metrics-bind-address=:8080"}, defaultWebhookArgs, extraArgs); !slices.Equal(c.Args, want) {
		t.Errorf("manager args %q, want %q", c.Args, want)
	}
	checkHTTPProbe(t, "manager liveness", c.LivenessProbe, "/healthz", 8081)
	checkHTTPProbe(t, "manager readiness", c.ReadinessProbe, "/readyz", 8081)
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("manager pod is not runAsNonRoot: %+v", psc)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("manager pod runs as uid 0")
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("manager container has no securityContext")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("manager root filesystem is writable")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("manager allows privilege escalation")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("manager is privileged")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("manager capabilities %+v, want drop [ALL] and add nothing", sc.Capabilities)
	}
	checkResources(t, "manager", c.Resources, true)
}

// checkNodeAgent asserts the DaemonSet's design: hostPID, the socket's
// hostPath, NODE_NAME, probes, and root without privileges or any
// capability but KILL.
func checkNodeAgent(t *testing.T, ds appsv1.DaemonSet, sa string) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	checkSelector(t, "node agent DaemonSet", ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	if spec.ServiceAccountName != sa {
		t.Errorf("node agent runs as service account %q, want %q", spec.ServiceAccountName, sa)
	}
	// The new agent starts beside the old one, which hands over to it.
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxSurge == nil || ru.MaxSurge.String() != "1" || ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "0" {
		t.Errorf("node agent update strategy %+v, want RollingUpdate with maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	if !spec.HostPID {
		t.Errorf("node agent without hostPID cannot read its peers' /proc/<pid>/cgroup")
	}
	if spec.HostNetwork {
		t.Errorf("node agent uses the host network, which it does not need")
	}
	c := container(t, spec, "nodeagent")
	if want := []string{"/nodeagent"}; !slices.Equal(c.Command, want) {
		t.Errorf("node agent command %q, want %q", c.Command, want)
	}
	if want := []string{"--socket=/run/handoff/agent.sock", "--metrics-bind-address=:9750"}; !slices.Equal(c.Args, want) {
		t.Errorf("node agent args %q, want %q", c.Args, want)
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" {
			nodeName = e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" && e.Value == ""
		}
	}
	if !nodeName {
		t.Errorf("node agent has no NODE_NAME from the downward API (spec.nodeName): %+v", c.Env)
	}
	// The socket's directory: a DirectoryOrCreate hostPath mounted where
	// --socket points.
	var vol string
	for _, v := range spec.Volumes {
		if v.HostPath != nil && v.HostPath.Path == "/run/handoff" {
			if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("hostPath /run/handoff has type %v, want DirectoryOrCreate", v.HostPath.Type)
			}
			vol = v.Name
		} else if v.HostPath != nil {
			t.Errorf("unexpected hostPath volume %s (%s)", v.Name, v.HostPath.Path)
		}
	}
	if vol == "" {
		t.Fatalf("node agent has no hostPath volume /run/handoff: %+v", spec.Volumes)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == vol {
			mounted = m.MountPath == "/run/handoff" && !m.ReadOnly
		}
	}
	if !mounted {
		t.Errorf("volume %s is not mounted read-write at /run/handoff: %+v", vol, c.VolumeMounts)
	}
	checkHTTPProbe(t, "node agent liveness", c.LivenessProbe, "/healthz", 9750)
	checkHTTPProbe(t, "node agent readiness", c.ReadinessProbe, "/readyz", 9750)
	everywhere := false
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			everywhere = true
		}
	}
	if !everywhere {
		t.Errorf("node agent does not tolerate every taint: %+v", spec.Tolerations)
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("node agent container has no securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("node agent is privileged")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("node agent runAsUser %v, want 0 (owner of the hostPath socket directory)", sc.RunAsUser)
	}
	if sc.RunAsNonRoot != nil && *sc.RunAsNonRoot {
		t.Errorf("node agent is runAsNonRoot, yet must run as uid 0")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("node agent allows privilege escalation")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("node agent root filesystem is writable")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"KILL"}) {
		t.Errorf("node agent capabilities %+v, want drop [ALL] add [KILL]", sc.Capabilities)
	}
	checkResources(t, "node agent", c.Resources, false)
}

func checkHTTPProbe(t *testing.T, what string, p *corev1.Probe, path string, port int) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe: want httpGet %s on %d, have %+v", what, path, port, p)
		return
	}
	if p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != port {
		t.Errorf("%s probe: httpGet %s on %s, want %s on %d", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path, port)
	}
}

func checkResources(t *testing.T, what string, r corev1.ResourceRequirements, wantLimits bool) {
	t.Helper()
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
		t.Errorf("%s: resource requests %v, want cpu and memory", what, r.Requests)
	}
	if r.Limits.Memory().IsZero() {
		t.Errorf("%s: no memory limit", what)
	}
	if wantLimits && r.Limits.Cpu().IsZero() {
		t.Errorf("%s: no cpu limit", what)
	}
}

// checkRBAC asserts that each workload's account is bound, in namespace
// ns, to a ClusterRole with exactly the generated rules, and that the
// manager may hold its leader-election Lease and record its Events.
func checkRBAC(t *testing.T, objs []object, prefix, ns string) {
	t.Helper()
	for _, comp := range []string{"manager", "nodeagent"} {
		name := prefix + "-" + comp
		var sa corev1.ServiceAccount
		mustFind(t, objs, "ServiceAccount", name).decode(t, &sa)
		if sa.Namespace != ns {
			t.Errorf("ServiceAccount %s in namespace %q, want %q", name, sa.Namespace, ns)
		}
		var cr rbacv1.ClusterRole
		mustFind(t, objs, "ClusterRole", name).decode(t, &cr)
		if want := generatedRules(t, comp); !semanticEqual(cr.Rules, want) {
			t.Errorf("ClusterRole %s rules differ from config/rbac/%s/role.yaml:\n%s\nwant:\n%s", name, comp, asYAML(cr.Rules), asYAML(want))
		}
		var crb rbacv1.ClusterRoleBinding
		mustFind(t, objs, "ClusterRoleBinding", name).decode(t, &crb)
		if crb.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}) {
			t.Errorf("ClusterRoleBinding %s binds %+v", name, crb.RoleRef)
		}
		if want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}; !slices.Equal(crb.Subjects, want) {
			t.Errorf("ClusterRoleBinding %s subjects %+v, want %+v", name, crb.Subjects, want)
		}
	}
	le := prefix + "-manager-leader-election"
	var role rbacv1.Role
	mustFind(t, objs, "Role", le).decode(t, &role)
	if role.Namespace != ns {
		t.Errorf("Role %s in namespace %q, want %q", le, role.Namespace, ns)
	}
	// What client-go's Lease lock and core/v1 event recorder call.
	for _, need := range []struct{ group, resource, verb string }{
		{"coordination.k8s.io", "leases", "get"},
		{"coordination.k8s.io", "leases", "create"},
		{"coordination.k8s.io", "leases", "update"},
		{"", "events", "create"},
		{"", "events", "patch"},
	} {
		if !allows(role.Rules, need.group, need.resource, need.verb) {
			t.Errorf("Role %s does not allow %s %s.%s", le, need.verb, need.resource, need.group)
		}
	}
	checkWebhookCertRole(t, objs, prefix, ns)
	for _, cr := range kinds(objs, "ClusterRole") {
		var r rbacv1.ClusterRole
		cr.decode(t, &r)
		for _, verb := range []string{"get", "list", "create", "update"} {
			if allows(r.Rules, "", "secrets", verb) {
				t.Errorf("ClusterRole %s may %s Secrets in every namespace", r.Name, verb)
			}
		}
	}
	var rb rbacv1.RoleBinding
	mustFind(t, objs, "RoleBinding", le).decode(t, &rb)
	if rb.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: le}) {
		t.Errorf("RoleBinding %s binds %+v", le, rb.RoleRef)
	}
	if want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: prefix + "-manager", Namespace: ns}}; !slices.Equal(rb.Subjects, want) {
		t.Errorf("RoleBinding %s subjects %+v, want %+v", le, rb.Subjects, want)
	}
}

func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

// checkCRD asserts the CRD is the generated one, whatever the chart added
// to its metadata.
func checkCRD(t *testing.T, objs []object) apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	var crd apiextensionsv1.CustomResourceDefinition
	mustFind(t, objs, "CustomResourceDefinition", "migrations.handoff.dev").decode(t, &crd)
	want := generatedCRD(t)
	if !semanticEqual(crd.Spec, want.Spec) {
		t.Errorf("CRD spec differs from config/crd/bases:\n%s\nwant:\n%s", asYAML(crd.Spec), asYAML(want.Spec))
	}
	for k, v := range want.Annotations {
		if crd.Annotations[k] != v {
			t.Errorf("CRD annotation %s=%q, want %q", k, crd.Annotations[k], v)
		}
	}
	return crd
}

// pinnedTag matches an image reference with an explicit tag (and
// optionally a digest).
var pinnedTag = regexp.MustCompile(`^[^@]+/[^/:@]+:([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(@sha256:[0-9a-f]{64})?$`)

// podSpecOf is the pod spec of a Deployment, DaemonSet or Pod; ok is false
// for any other kind.
func podSpecOf(t *testing.T, o object) (spec corev1.PodSpec, ok bool) {
	t.Helper()
	switch o.Kind {
	case "Deployment":
		var d appsv1.Deployment
		o.decode(t, &d)
		return d.Spec.Template.Spec, true
	case "DaemonSet":
		var d appsv1.DaemonSet
		o.decode(t, &d)
		return d.Spec.Template.Spec, true
	case "Pod":
		var p corev1.Pod
		o.decode(t, &p)
		return p.Spec, true
	}
	return corev1.PodSpec{}, false
}

// checkImages asserts every container of every workload and pod pulls
// IfNotPresent an image with an explicit tag that is not "latest"; with
// wantTag, that tag.
func checkImages(t *testing.T, objs []object, wantTag string) {
	t.Helper()
	n := 0
	for _, o := range objs {
		spec, ok := podSpecOf(t, o)
		switch {
		case !ok && slices.Contains([]string{"StatefulSet", "Job", "CronJob", "ReplicaSet"}, o.Kind):
			t.Fatalf("%s %s: checkImages does not know %s yet", o.Source, o.key(), o.Kind)
		case !ok:
			continue
		}
		for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
			n++
			what := fmt.Sprintf("%s %s container %s", o.Source, o.key(), c.Name)
			if c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("%s: imagePullPolicy %q, want IfNotPresent", what, c.ImagePullPolicy)
			}
			m := pinnedTag.FindStringSubmatch(c.Image)
			switch {
			case m == nil:
				t.Errorf("%s: image %q has no explicit tag", what, c.Image)
			case m[1] == "latest" || strings.HasSuffix(c.Image, ":latest"):
				t.Errorf("%s: image %q is :latest", what, c.Image)
			case wantTag != "" && m[1] != wantTag:
				t.Errorf("%s: image %q, want tag %q", what, c.Image, wantTag)
			}
		}
	}
	if n == 0 {
		t.Fatalf("no containers among %d objects", len(objs))
	}
}

func yamlUnmarshal(b []byte, v any) error { return yaml.Unmarshal(b, v) }
