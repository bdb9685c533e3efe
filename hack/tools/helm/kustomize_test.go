package main

import (
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestKustomizeDefault holds `kubectl apply -k config/default` to the same
// design as the chart.
func TestKustomizeDefault(t *testing.T) {
	objs := buildDefaultKustomization(t)

	var d appsv1.Deployment
	mustFind(t, objs, "Deployment", "handoff-manager").decode(t, &d)
	checkManager(t, d, "handoff-manager")
	var ds appsv1.DaemonSet
	mustFind(t, objs, "DaemonSet", "handoff-nodeagent").decode(t, &ds)
	checkNodeAgent(t, ds, "handoff-nodeagent")
	checkRBAC(t, objs, "handoff", "handoff-system")
	checkWebhook(t, objs, "handoff", "handoff-system")
	crd := checkCRD(t, objs)
	if _, ok := crd.Annotations["helm.sh/resource-policy"]; ok {
		t.Errorf("config/default's CRD carries a Helm annotation")
	}
	checkImages(t, objs, "0.1.0")

	var ns corev1.Namespace
	mustFind(t, objs, "Namespace", "handoff-system").decode(t, &ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace handoff-system does not admit the agent's hostPID and hostPath: labels %v", ns.Labels)
	}
	for _, o := range objs {
		switch o.Kind {
		case "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration":
			if o.Namespace != "" {
				t.Errorf("cluster-scoped %s has namespace %q", o.key(), o.Namespace)
			}
		default:
			if o.Namespace != "handoff-system" {
				t.Errorf("%s is in namespace %q, want handoff-system", o.key(), o.Namespace)
			}
		}
	}
}

// TestKustomizeNamespaceOverlay checks that an overlay moving the system to
// another namespace moves the bindings' subjects with it (kustomize
// rewrites them only for ServiceAccounts it knows).
func TestKustomizeNamespaceOverlay(t *testing.T) {
	dir := t.TempDir()
	base, err := filepath.Rel(dir, filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	k := "namespace: ops\nresources:\n- " + base + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := buildKustomization(dir)
	if err != nil {
		t.Fatal(err)
	}
	objs := parseObjects(t, "overlay namespace ops", out)
	checkRBAC(t, objs, "handoff", "ops")
	checkWebhook(t, objs, "handoff", "ops")
	mustFind(t, objs, "Namespace", "ops")
}
