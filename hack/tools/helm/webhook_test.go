package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// defaultWebhookArgs are the manager's webhook flags of config/default and
// of the chart's release "handoff" in handoff-system.
var defaultWebhookArgs = []string{
	"--webhook-port=9443",
	"--webhook-cert-secret=handoff-webhook-cert",
	"--webhook-service=handoff-webhook",
	"--webhook-configuration=handoff-webhook",
	"--socket-dir=/run/handoff",
	"--socket-group=0",
}

// managerFlag returns the value of --name among the manager's args.
func managerFlag(c corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// injectPath is the path controllers/inject serves, read from its source.
func injectPath(t *testing.T) string {
	t.Helper()
	return servedPath(t, "inject")
}

// servedPath is the const Path of controllers/<pkg>/webhook.go.
func servedPath(t *testing.T, pkg string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(root, "controllers", pkg, "webhook.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`const Path = "([^"]+)"`).FindSubmatch(src)
	if m == nil {
		t.Fatalf("controllers/%s/webhook.go defines no const Path", pkg)
	}
	return string(m[1])
}

// checkWebhookCertRole asserts that the manager may keep its certificate's
// Secret in its own namespace, through a Role, and no other Secret.
func checkWebhookCertRole(t *testing.T, objs []object, prefix, ns string) rbacv1.Role {
	t.Helper()
	name := prefix + "-manager-webhook-cert"
	var role rbacv1.Role
	mustFind(t, objs, "Role", name).decode(t, &role)
	if role.Namespace != ns {
		t.Errorf("Role %s in namespace %q, want %q", name, role.Namespace, ns)
	}
	for _, verb := range []string{"get", "create", "update"} {
		if !allows(role.Rules, "", "secrets", verb) {
			t.Errorf("Role %s does not allow %s secrets", name, verb)
		}
	}
	for _, r := range role.Rules {
		if !slices.Equal(r.Resources, []string{"secrets"}) || !slices.Equal(r.APIGroups, []string{""}) {
			t.Errorf("Role %s grants more than secrets: %+v", name, r)
		}
		if slices.ContainsFunc(r.Verbs, func(v string) bool { return v == "list" || v == "watch" || v == "delete" || v == "*" }) {
			t.Errorf("Role %s grants %v on secrets; the manager reads one Secret by name", name, r.Verbs)
		}
		if slices.Contains(r.Verbs, "get") && len(r.ResourceNames) != 1 {
			t.Errorf("Role %s lets the manager read Secrets %v, want its certificate's alone", name, r.ResourceNames)
		}
	}
	var rb rbacv1.RoleBinding
	mustFind(t, objs, "RoleBinding", name).decode(t, &rb)
	if rb.Namespace != ns || rb.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name}) {
		t.Errorf("RoleBinding %s in %q binds %+v", name, rb.Namespace, rb.RoleRef)
	}
	if want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: prefix + "-manager", Namespace: ns}}; !slices.Equal(rb.Subjects, want) {
		t.Errorf("RoleBinding %s subjects %+v, want %+v", name, rb.Subjects, want)
	}
	return role
}

// checkWebhook asserts the webhook of an install whose manager keeps its
// own certificate: the configuration's two entries, the Service that
// reaches the manager's webhook port, and manager flags that name them,
// the Role's Secret and the agent's socket.
func checkWebhook(t *testing.T, objs []object, prefix, ns string) {
	t.Helper()
	name := prefix + "-webhook"
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	mustFind(t, objs, "MutatingWebhookConfiguration", name).decode(t, &wh)
	if len(wh.Webhooks) != 3 {
		t.Fatalf("%s has %d entries, want 3 (pod label, namespace label, Deployment updates)", name, len(wh.Webhooks))
	}
	checkDeploymentEntry(t, name, ns, wh.Webhooks[2])
	path := injectPath(t)
	enabled := labels.Set{"handoff.dev/enabled": "true"}
	optedOut := labels.Set{"handoff.dev/enabled": "false"}
	for i, w := range wh.Webhooks[:2] {
		cc := w.ClientConfig
		if cc.URL != nil || cc.Service == nil || cc.Service.Name != name || cc.Service.Namespace != ns || cc.Service.Path == nil || *cc.Service.Path != path ||
			cc.Service.Port == nil || *cc.Service.Port != 443 {
			t.Errorf("%s entry %s calls %+v, want Service %s/%s port 443 path %s", name, w.Name, cc.Service, ns, name, path)
		}
		if len(cc.CABundle) != 0 {
			t.Errorf("%s entry %s carries a caBundle: the manager or cainjector sets it", name, w.Name)
		}
		if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{"CREATE"}) ||
			!slices.Equal(w.Rules[0].Resources, []string{"pods"}) || !slices.Equal(w.Rules[0].APIGroups, []string{""}) {
			t.Errorf("%s entry %s rules %+v, want pod CREATE only", name, w.Name, w.Rules)
		}
		if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
			t.Errorf("%s entry %s failurePolicy %s: a down webhook must not block pods", name, w.Name, asYAML(w.FailurePolicy))
		}
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun {
			t.Errorf("%s entry %s sideEffects %s, want NoneOnDryRun", name, w.Name, asYAML(w.SideEffects))
		}
		if w.TimeoutSeconds == nil || *w.TimeoutSeconds != 5 {
			t.Errorf("%s entry %s timeoutSeconds %s, want 5", name, w.Name, asYAML(w.TimeoutSeconds))
		}
		if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
			t.Errorf("%s entry %s reinvocationPolicy %s, want IfNeeded", name, w.Name, asYAML(w.ReinvocationPolicy))
		}
		if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
			t.Errorf("%s entry %s admissionReviewVersions %v", name, w.Name, w.AdmissionReviewVersions)
		}
		objSel := selector(t, w.ObjectSelector)
		nsSel := selector(t, w.NamespaceSelector)
		switch i {
		case 0: // the pod's label, in any namespace
			if !objSel.Matches(enabled) || objSel.Matches(labels.Set{}) || objSel.Matches(optedOut) || !nsSel.Empty() {
				t.Errorf("%s entry %s selects pods %q in namespaces %q, want pods labelled true anywhere", name, w.Name, objSel, nsSel)
			}
		case 1: // the namespace's label, unless the pod opts out
			if !nsSel.Matches(enabled) || nsSel.Matches(labels.Set{}) || !objSel.Matches(labels.Set{}) || !objSel.Matches(enabled) || objSel.Matches(optedOut) {
				t.Errorf("%s entry %s selects pods %q in namespaces %q, want every pod but those labelled false in labelled namespaces", name, w.Name, objSel, nsSel)
			}
		}
	}

	var d appsv1.Deployment
	deps := kinds(objs, "Deployment")
	if len(deps) != 1 {
		t.Fatalf("%d Deployments", len(deps))
	}
	deps[0].decode(t, &d)
	mc := container(t, d.Spec.Template.Spec, "manager")
	var svc corev1.Service
	mustFind(t, objs, "Service", name).decode(t, &svc)
	checkSelector(t, "webhook Service", svc.Spec.Selector, d.Spec.Template.Labels)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 443 {
		t.Fatalf("webhook Service ports %+v, want 443", svc.Spec.Ports)
	}
	port, _ := managerFlag(mc, "webhook-port")
	target := svc.Spec.Ports[0].TargetPort.String()
	if !slices.ContainsFunc(mc.Ports, func(p corev1.ContainerPort) bool {
		return p.Name == target && strconv.Itoa(int(p.ContainerPort)) == port && p.Protocol == corev1.ProtocolTCP
	}) {
		t.Errorf("webhook Service targets %q, but the manager's ports are %+v and --webhook-port=%s", target, mc.Ports, port)
	}

	role := checkWebhookCertRole(t, objs, prefix, ns)
	for flag, want := range map[string]string{"webhook-service": name, "webhook-configuration": name} {
		if v, _ := managerFlag(mc, flag); v != want {
			t.Errorf("manager --%s=%q, want %q", flag, v, want)
		}
	}
	secret, _ := managerFlag(mc, "webhook-cert-secret")
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 && !slices.Equal(r.ResourceNames, []string{secret}) {
			t.Errorf("Role grants Secrets %v, but the manager keeps --webhook-cert-secret=%q", r.ResourceNames, secret)
		}
	}
	if _, ok := managerFlag(mc, "webhook-cert-dir"); ok {
		t.Errorf("manager reads its certificate from files, not the Secret it may write")
	}
	checkInjectsAgentSocket(t, objs, mc)
}

// checkDeploymentEntry asserts the entry that pauses opted-in
// Deployments for an in-place rollout: Deployment UPDATEs to the
// deployhook path, failing open, called once.
func checkDeploymentEntry(t *testing.T, name, ns string, w admissionregistrationv1.MutatingWebhook) {
	t.Helper()
	cc := w.ClientConfig
	if path := servedPath(t, "deployhook"); cc.URL != nil || cc.Service == nil || cc.Service.Name != name || cc.Service.Namespace != ns ||
		cc.Service.Path == nil || *cc.Service.Path != path || cc.Service.Port == nil || *cc.Service.Port != 443 {
		t.Errorf("%s entry %s calls %+v, want Service %s/%s port 443 path %s", name, w.Name, cc.Service, ns, name, path)
	}
	if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{"UPDATE"}) ||
		!slices.Equal(w.Rules[0].Resources, []string{"deployments"}) || !slices.Equal(w.Rules[0].APIGroups, []string{"apps"}) {
		t.Errorf("%s entry %s rules %+v, want Deployment UPDATE only", name, w.Name, w.Rules)
	}
	if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("%s entry %s failurePolicy %s: a down webhook must not block Deployments", name, w.Name, asYAML(w.FailurePolicy))
	}
	if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun {
		t.Errorf("%s entry %s sideEffects %s, want NoneOnDryRun", name, w.Name, asYAML(w.SideEffects))
	}
	if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.NeverReinvocationPolicy {
		t.Errorf("%s entry %s reinvocationPolicy %s, want Never (each call names a new rollout)", name, w.Name, asYAML(w.ReinvocationPolicy))
	}
	if len(cc.CABundle) != 0 || w.TimeoutSeconds == nil || *w.TimeoutSeconds != 5 || w.ObjectSelector != nil || w.NamespaceSelector != nil {
		t.Errorf("%s entry %s: caBundle %d bytes, timeout %s, selectors %+v %+v; want none, 5, none", name, w.Name, len(cc.CABundle), asYAML(w.TimeoutSeconds), w.ObjectSelector, w.NamespaceSelector)
	}
}

// checkInjectsAgentSocket asserts that the manager injects the directory
// and group of the agent's socket.
func checkInjectsAgentSocket(t *testing.T, objs []object, mc corev1.Container) {
	t.Helper()
	var ds appsv1.DaemonSet
	dss := kinds(objs, "DaemonSet")
	if len(dss) != 1 {
		t.Fatalf("%d DaemonSets", len(dss))
	}
	dss[0].decode(t, &ds)
	ac := container(t, ds.Spec.Template.Spec, "nodeagent")
	socket, _ := strings.CutPrefix(ac.Args[0], "--socket=")
	if dir, _ := managerFlag(mc, "socket-dir"); dir+"/agent.sock" != socket {
		t.Errorf("manager injects --socket-dir=%q, but the agent serves %q", dir, socket)
	}
	group, _ := managerFlag(mc, "socket-group")
	if ac.SecurityContext == nil || ac.SecurityContext.RunAsGroup == nil || strconv.FormatInt(*ac.SecurityContext.RunAsGroup, 10) != group {
		t.Errorf("manager injects --socket-group=%q, but the agent runs as group %s", group, asYAML(ac.SecurityContext))
	}
}

func TestChartWebhook(t *testing.T) {
	checkWebhook(t, renderDefault(t), "handoff", "handoff-system")
	edge := renderRelease(t, "edge", "ops", "nodeAgent.socketDir=/var/run/ho/", "nodeAgent.socketGroup=2750")
	objs := parseObjects(t, "release edge", []byte(edge.Manifest))
	checkWebhook(t, objs, "edge-handoff", "ops")
	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "edge-handoff-manager").decode(t, &d)
	mc := container(t, d.Spec.Template.Spec, "manager")
	if dir, _ := managerFlag(mc, "socket-dir"); dir != "/var/run/ho" {
		t.Errorf("--socket-dir=%q, want nodeAgent.socketDir without its slash", dir)
	}
	if secret, _ := managerFlag(mc, "webhook-cert-secret"); secret != "edge-handoff-webhook-cert" {
		t.Errorf("--webhook-cert-secret=%q, want the release's", secret)
	}
	notes := edge.Info.Notes
	if !strings.Contains(notes, `handoff.dev/enabled: "true"`) {
		t.Errorf("NOTES.txt does not say how to opt in:\n%s", notes)
	}
}

func TestChartWebhookDisabled(t *testing.T) {
	rel := renderRelease(t, "handoff", "handoff-system", "webhook.enabled=false")
	objs := parseObjects(t, "webhook.enabled=false", []byte(rel.Manifest))
	for _, o := range objs {
		if o.Kind == "MutatingWebhookConfiguration" || strings.Contains(o.Name, "webhook") {
			t.Errorf("webhook.enabled=false renders %s", o.key())
		}
	}
	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "handoff-manager").decode(t, &d)
	mc := container(t, d.Spec.Template.Spec, "manager")
	if port, _ := managerFlag(mc, "webhook-port"); port != "0" {
		t.Errorf("manager --webhook-port=%q, want 0 (off)", port)
	}
	for _, a := range mc.Args {
		if strings.HasPrefix(a, "--webhook-cert") || strings.HasPrefix(a, "--socket-") {
			t.Errorf("manager with the webhook off still gets %s", a)
		}
	}
	if slices.ContainsFunc(mc.Ports, func(p corev1.ContainerPort) bool { return p.Name == "webhook" }) {
		t.Errorf("manager with the webhook off declares a webhook port")
	}
	if strings.Contains(rel.Info.Notes, "handoff.dev/enabled") {
		t.Errorf("NOTES.txt offers the webhook it did not install")
	}
}

func TestChartWebhookCertManager(t *testing.T) {
	objs := renderDefault(t, "webhook.certManager.enabled=true")
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	mustFind(t, objs, "MutatingWebhookConfiguration", "handoff-webhook").decode(t, &wh)
	var cert struct {
		Metadata struct{ Name, Namespace string }
		Spec     struct {
			SecretName string   `json:"secretName"`
			DNSNames   []string `json:"dnsNames"`
			IssuerRef  struct{ Kind, Name string }
		}
	}
	var issuer struct {
		Metadata struct{ Name, Namespace string }
		Spec     struct {
			SelfSigned *struct{} `json:"selfSigned"`
		}
	}
	for _, c := range []struct {
		kind string
		v    any
	}{{"Certificate", &cert}, {"Issuer", &issuer}} {
		objs := kinds(objs, c.kind)
		if len(objs) != 1 || objs[0].APIVersion != "cert-manager.io/v1" {
			t.Fatalf("want one cert-manager.io/v1 %s, have %d", c.kind, len(objs))
		}
		if err := yamlUnmarshal(objs[0].doc, c.v); err != nil {
			t.Fatal(err)
		}
	}
	if want := cert.Metadata.Namespace + "/" + cert.Metadata.Name; wh.Annotations["cert-manager.io/inject-ca-from"] != want {
		t.Errorf("configuration annotated inject-ca-from=%q, want %q", wh.Annotations["cert-manager.io/inject-ca-from"], want)
	}
	if issuer.Spec.SelfSigned == nil || cert.Spec.IssuerRef.Kind != "Issuer" || cert.Spec.IssuerRef.Name != issuer.Metadata.Name || issuer.Metadata.Namespace != "handoff-system" {
		t.Errorf("Certificate issued by %+v, Issuer %+v", cert.Spec.IssuerRef, issuer)
	}
	svc := wh.Webhooks[0].ClientConfig.Service
	if want := []string{svc.Name + "." + svc.Namespace + ".svc", svc.Name + "." + svc.Namespace + ".svc.cluster.local"}; !slices.Equal(cert.Spec.DNSNames, want) {
		t.Errorf("Certificate dnsNames %v, want %v (the name the API server calls)", cert.Spec.DNSNames, want)
	}

	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "handoff-manager").decode(t, &d)
	spec := d.Spec.Template.Spec
	mc := container(t, spec, "manager")
	dir, ok := managerFlag(mc, "webhook-cert-dir")
	if !ok {
		t.Fatalf("manager args %q lack --webhook-cert-dir", mc.Args)
	}
	vol := ""
	for _, m := range mc.VolumeMounts {
		if m.MountPath == dir && m.ReadOnly {
			vol = m.Name
		}
	}
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool {
		return v.Name == vol && v.Secret != nil && v.Secret.SecretName == cert.Spec.SecretName
	}) {
		t.Errorf("manager does not mount Secret %s read-only at %s: mounts %+v volumes %+v", cert.Spec.SecretName, dir, mc.VolumeMounts, spec.Volumes)
	}
	for _, a := range mc.Args {
		if strings.HasPrefix(a, "--webhook-cert-secret") || strings.HasPrefix(a, "--webhook-configuration") {
			t.Errorf("with cert-manager the manager still gets %s", a)
		}
	}
	if _, ok := find(objs, "Role", "handoff-manager-webhook-cert"); ok {
		t.Errorf("with cert-manager the manager may still write Secrets")
	}
	checkInjectsAgentSocket(t, objs, mc)
}

func TestChartWebhookRefusesTypos(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"webhook.certmanager.enabled=true", "certmanager"},
		{"webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"},
		{"webhook.port=0", "/webhook/port"},
	} {
		_, err := renderChart(renderOptions{Chart: chartDir(), Values: values(t, tc.set)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %s: error %v, want one naming %s", tc.set, err, tc.want)
		}
	}
}

// selector is a webhook entry's label selector; nil selects everything.
func selector(t *testing.T, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	if s == nil {
		return labels.Everything()
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("selector %+v: %v", s, err)
	}
	return sel
}
