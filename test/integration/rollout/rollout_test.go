// Package rollout tests the decisions of the rollout controllers and of
// the node agent about opted-in workloads against a real kube-apiserver
// and etcd (envtest; make test builds the binaries): which pod hands over
// to which, the Migration the surge path creates, the readiness gate it
// opens or keeps closed, and the Events that say what to change. There is
// no kubelet or workload controller here: the tests write the pods and
// their status as those would, so they need no root.
package rollout

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrlzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/controllers"
	"github.com/handoff-dev/handoff/internal/workload"
	"github.com/handoff-dev/handoff/nodeagent/kube"
	"github.com/handoff-dev/handoff/nodeagent/podid"
)

// bound is how long any wait may take before it counts as a hang.
const bound = 30 * time.Second

// joinGrace is the rollout's wait for a process to join, shortened.
const joinGrace = 2 * time.Second

var (
	cfg     *rest.Config
	scheme  = runtime.NewScheme()
	k8s     client.Client
	skipWhy string
)

func TestMain(m *testing.M) {
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		skipWhy = "needs KUBEBUILDER_ASSETS naming kube-apiserver and etcd: run `make test` (it builds them with hack/envtest-bins.sh)"
		os.Exit(m.Run())
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	var err error
	if cfg, err = env.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "start kube-apiserver and etcd from %s: %v\n", assets, err)
		os.Exit(1)
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintf(os.Stderr, "client: %v\n", err)
		env.Stop()
		os.Exit(1)
	}
	ctrl.SetLogger(logr.Discard())
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
	}
	os.Exit(code)
}

// startManager runs the rollout controllers as the manager does, until
// the returned stop is called or the test ends.
func startManager(t *testing.T) (stop func()) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	logger := logr.Discard() // HANDOFF_ITEST_LOG=1 shows the manager's log
	if os.Getenv("HANDOFF_ITEST_LOG") != "" {
		logger = ctrlzap.New(ctrlzap.WriteTo(os.Stderr), ctrlzap.UseDevMode(true))
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Logger: logger,
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		// Each test runs a manager of its own, one after another.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []interface{ SetupWithManager(ctrl.Manager) error }{
		&controllers.SurgeReconciler{}, &controllers.DaemonSetChecker{}, &controllers.InPlaceReconciler{JoinGrace: joinGrace},
		&controllers.InPlaceDaemonSetReconciler{InPlaceReconciler: controllers.InPlaceReconciler{JoinGrace: joinGrace}},
		&controllers.DeploymentReconciler{},
	} {
		if err := c.SetupWithManager(mgr); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// namespace creates a namespace of the test's own.
func namespace(t *testing.T, name string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// daemonSet creates an opted-in hostNetwork DaemonSet with the surge
// strategy; edit changes it first.
func daemonSet(t *testing.T, ns, name string, edit func(*appsv1.DaemonSet)) *appsv1.DaemonSet {
	t.Helper()
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxSurge: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(0))}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name, v1alpha1.EnabledLabel: "true"}},
				Spec:       corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "streamer", Image: "streamer:1"}}},
			},
		},
	}
	if edit != nil {
		edit(ds)
	}
	if err := k8s.Create(context.Background(), ds); err != nil {
		t.Fatalf("create daemonset %s: %v", name, err)
	}
	return ds
}

// pod creates a running, gated pod of ds on node, as the DaemonSet
// controller, the webhook and kubelet together would.
func pod(t *testing.T, ds *appsv1.DaemonSet, name, node string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ds.Namespace, Name: name, Labels: map[string]string{"app": ds.Name, appsv1.DefaultDaemonSetUniqueLabelKey: "rev-" + name},
			Annotations: annotations},
		Spec: *ds.Spec.Template.Spec.DeepCopy(),
	}
	p.Spec.NodeName = node
	p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: v1alpha1.ConditionMigrated}}
	if err := ctrl.SetControllerReference(ds, p, scheme); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	orig := p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "streamer", ContainerID: "containerd://" + name, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
	// A patch, as kubelet's: the surge controller may have written the
	// gate condition since the create.
	if err := k8s.Status().Patch(ctx, p, client.MergeFrom(orig)); err != nil {
		t.Fatalf("set pod %s running: %v", name, err)
	}
	return p
}

// waitGate waits until pod's Migrated condition has status and reason.
func waitGate(t *testing.T, ns, name string, status corev1.ConditionStatus, reason string) *corev1.PodCondition {
	t.Helper()
	var last string
	deadline := time.Now().Add(bound)
	for {
		p := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, p); err != nil {
			t.Fatalf("get pod %s: %v", name, err)
		}
		if c := workload.GateCondition(p); c != nil {
			if c.Status == status && c.Reason == reason {
				return c
			}
			last = fmt.Sprintf("%s %s: %s", c.Status, c.Reason, c.Message)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: gate %q; want %s %s", name, last, status, reason)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// waitMigration waits until the Migration named name exists.
func waitMigration(t *testing.T, ns, name string) *v1alpha1.Migration {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		m := &v1alpha1.Migration{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, m)
		if err == nil {
			return m
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			t.Fatalf("migration %s: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// finish writes a final phase into a Migration's status, as the
// Migration controller would.
func finish(t *testing.T, m *v1alpha1.Migration, phase v1alpha1.Phase, msg string) {
	t.Helper()
	m.Status.Phase, m.Status.Message = phase, msg
	if phase == v1alpha1.PhaseCompleted {
		m.Status.Pause = &metav1.Duration{Duration: 12 * time.Millisecond}
	}
	if err := k8s.Status().Update(context.Background(), m); err != nil {
		t.Fatalf("set migration %s %s: %v", m.Name, phase, err)
	}
}

// waitEvent waits for an Event about the object named name whose note
// contains every one of says.
func waitEvent(t *testing.T, ns, name string, says ...string) eventsv1.Event {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		var list eventsv1.EventList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	next:
		for _, e := range list.Items {
			if e.Regarding.Name != name {
				continue
			}
			for _, s := range says {
				if !strings.Contains(e.Note, s) {
					continue next
				}
			}
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event about %s saying %q", name, says)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// TestSurge follows a DaemonSet's surge on one node: the first pod has no
// predecessor and opens its gate at once; the next one gets a Migration
// from it, and its gate opens when the Migration completes; the node
// agent's answer to each pod's process agrees.
func TestSurge(t *testing.T) {
	startManager(t)
	ns := namespace(t, "surge")
	ds := daemonSet(t, ns, "streamer", nil)
	pod(t, ds, "old", "node-a", nil)
	waitGate(t, ns, "old", corev1.ConditionTrue, v1alpha1.ReasonNoPredecessor)
	agentSays(t, "old", false)

	newPod := pod(t, ds, "new", "node-a", nil)
	c := waitGate(t, ns, "new", corev1.ConditionFalse, v1alpha1.ReasonMigrating)
	t.Logf("gate while migrating: %s", c.Message)
	m := waitMigration(t, ns, "new")
	if m.Spec.Source.Pod != "old" || m.Spec.Target.Pod != "new" || m.Spec.Source.Container != "streamer" || m.Spec.Target.Container != "streamer" ||
		m.Spec.SourcePolicyOrDefault() != v1alpha1.SourcePolicyDelete || !metav1.IsControlledBy(m, newPod) {
		t.Fatalf("migration %+v, owners %+v; want old/streamer → new/streamer, Delete, controlled by pod new", m.Spec, m.OwnerReferences)
	}
	if m.Labels[v1alpha1.WorkloadLabel] != "streamer" || m.Labels[v1alpha1.WorkloadKindLabel] != "DaemonSet" || m.Labels[v1alpha1.RevisionLabel] != "rev-new" {
		t.Fatalf("migration labels %v; want the workload, its kind and the new pod's revision", m.Labels)
	}
	agentSays(t, "new", true)
	finish(t, m, v1alpha1.PhaseCompleted, "moved")
	waitGate(t, ns, "new", corev1.ConditionTrue, v1alpha1.ReasonMigrated)
	waitEvent(t, ns, "new", "moved every socket of pod old")

	// A pod on another node has nothing to take over.
	pod(t, ds, "other-node", "node-b", nil)
	waitGate(t, ns, "other-node", corev1.ConditionTrue, v1alpha1.ReasonNoPredecessor)
	agentSays(t, "other-node", false)
}

// TestSurgeFailure: a failed Migration keeps the gate closed under Pause
// (the default), with Events on the pod and the DaemonSet; Recreate opens
// it.
func TestSurgeFailure(t *testing.T) {
	startManager(t)
	ns := namespace(t, "surge-failure")
	ds := daemonSet(t, ns, "streamer", nil)
	pod(t, ds, "old", "node-a", nil)
	waitGate(t, ns, "old", corev1.ConditionTrue, v1alpha1.ReasonNoPredecessor)

	pod(t, ds, "paused", "node-a", nil)
	finish(t, waitMigration(t, ns, "paused"), v1alpha1.PhaseFailed, "the new process crashed")
	c := waitGate(t, ns, "paused", corev1.ConditionFalse, v1alpha1.ReasonMigrationFailed)
	for _, s := range []string{"the new process crashed", "old serves on", v1alpha1.OnFailureAnnotation} {
		if !strings.Contains(c.Message, s) {
			t.Errorf("gate message %q does not say %q", c.Message, s)
		}
	}
	waitEvent(t, ns, "streamer", "pod paused", "the new process crashed")
	// Its Migration is over, but the gate is still closed and the old pod
	// serves: a restarted process of the pod is told to wait again.
	if why := agentSays(t, "paused", true); !strings.Contains(why, "pod surge-failure/old of the same workload serves on this node") {
		t.Errorf("the agent told pod paused's process to wait because %q; want the old pod named", why)
	}

	pod(t, ds, "recreated", "node-a", map[string]string{v1alpha1.OnFailureAnnotation: string(v1alpha1.OnFailureRecreate), v1alpha1.TimeoutAnnotation: "20s"})
	m := waitMigration(t, ns, "recreated")
	if m.Spec.TimeoutOrDefault() != 20*time.Second {
		t.Errorf("migration timeout %v; want the pod's %s, 20s", m.Spec.TimeoutOrDefault(), v1alpha1.TimeoutAnnotation)
	}
	finish(t, m, v1alpha1.PhaseFailed, "the new process crashed")
	waitGate(t, ns, "recreated", corev1.ConditionTrue, v1alpha1.ReasonRecreated)

	// Switching the DaemonSet to Recreate opens the gate the failure
	// kept closed under Pause.
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(ds), ds); err != nil {
		t.Fatal(err)
	}
	ds.Annotations = map[string]string{v1alpha1.OnFailureAnnotation: string(v1alpha1.OnFailureRecreate)}
	if err := k8s.Update(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
	waitGate(t, ns, "paused", corev1.ConditionTrue, v1alpha1.ReasonRecreated)
}

// TestDaemonSetRefusals: what cannot keep connections is named in a
// Warning on the DaemonSet, and nothing is changed.
func TestDaemonSetRefusals(t *testing.T) {
	startManager(t)
	ns := namespace(t, "refusals")
	daemonSet(t, ns, "ports", func(ds *appsv1.DaemonSet) {
		ds.Spec.Template.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
	})
	waitEvent(t, ns, "ports", "declares port 8080", "106417")
	daemonSet(t, ns, "no-surge", func(ds *appsv1.DaemonSet) {
		ds.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateDaemonSet{MaxUnavailable: ptr.To(intstr.FromInt32(1))}
	})
	waitEvent(t, ns, "no-surge", "maxSurge is 0", "set maxSurge: 1 and maxUnavailable: 0")
	daemonSet(t, ns, "pod-network", func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.HostNetwork = false })
	waitEvent(t, ns, "pod-network", "set hostNetwork: true", "or update the pods in place")
}

// agentSays checks what the node agent would tell a process of the pod
// that asks whether to wait, from the same API server.
func agentSays(t *testing.T, name string, want bool) (why string) {
	t.Helper()
	var p corev1.Pod
	deadline := time.Now().Add(bound)
	for {
		var list corev1.PodList
		if err := k8s.List(context.Background(), &list); err != nil {
			t.Fatal(err)
		}
		for _, q := range list.Items {
			if q.Name == name {
				p = q
			}
		}
		wait, why := (&kube.Predecessors{Client: k8s}).Wait(podid.Identity{PodUID: string(p.UID)})
		if wait == want {
			t.Logf("agent to pod %s: wait=%v (%s)", name, wait, why)
			return why
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent to pod %s: wait=%v (%s); want %v", name, wait, why, want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}
