package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/controllers"
)

// sts is a StatefulSet as its controller, kubelet and the pods' owners
// would leave it, written by hand: the test plays the StatefulSet
// controller (revisions, status, pods) and kubelet (readiness).
type sts struct {
	t   *testing.T
	obj *appsv1.StatefulSet
}

// template is the StatefulSet's pod template with the given image and
// env value.
func template(image, env string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "streamer", Image: image,
			Env: []corev1.EnvVar{{Name: "MODE", Value: env}}}}},
	}
}

// newSTS creates a StatefulSet of replicas pods at revision "web-r1"
// (template image "streamer:1"), all ready, with the given annotations.
func newSTS(t *testing.T, ns string, replicas int, annotations map[string]string) *sts {
	t.Helper()
	ctx := context.Background()
	s := &sts{t: t, obj: &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Annotations: annotations},
		Spec: appsv1.StatefulSetSpec{
			Replicas:       ptr.To(int32(replicas)),
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType},
			Template:       template("streamer:1", "a"),
		},
	}}
	if err := k8s.Create(ctx, s.obj); err != nil {
		t.Fatalf("create statefulset: %v", err)
	}
	s.revision("web-r1", s.obj.Spec.Template)
	for i := range replicas {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("web-%d", i),
				Labels: map[string]string{"app": "web", appsv1.StatefulSetRevisionLabel: "web-r1"}},
			Spec: *s.obj.Spec.Template.Spec.DeepCopy(),
		}
		p.Spec.NodeName = "node-a"
		if err := ctrl.SetControllerReference(s.obj, p, scheme); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
		orig := p.DeepCopy()
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if err := k8s.Status().Patch(ctx, p, client.MergeFrom(orig)); err != nil {
			t.Fatalf("set pod %s ready: %v", p.Name, err)
		}
	}
	s.status("web-r1")
	return s
}

// revision writes a ControllerRevision holding tpl, as the StatefulSet
// controller does.
func (s *sts) revision(name string, tpl corev1.PodTemplateSpec) {
	s.t.Helper()
	raw, err := json.Marshal(map[string]any{"spec": map[string]any{"template": tpl}})
	if err != nil {
		s.t.Fatal(err)
	}
	cr := &appsv1.ControllerRevision{ObjectMeta: metav1.ObjectMeta{Namespace: s.obj.Namespace, Name: name},
		Data: runtime.RawExtension{Raw: raw}, Revision: 1}
	if err := ctrl.SetControllerReference(s.obj, cr, scheme); err != nil {
		s.t.Fatal(err)
	}
	if err := k8s.Create(context.Background(), cr); err != nil {
		s.t.Fatalf("create controllerrevision %s: %v", name, err)
	}
}

// status writes the StatefulSet's status with update revision rev.
func (s *sts) status(rev string) {
	s.t.Helper()
	ctx := context.Background()
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(s.obj), s.obj); err != nil {
		s.t.Fatal(err)
	}
	s.obj.Status = appsv1.StatefulSetStatus{ObservedGeneration: s.obj.Generation, Replicas: *s.obj.Spec.Replicas,
		CurrentRevision: "web-r1", UpdateRevision: rev}
	if err := k8s.Status().Update(ctx, s.obj); err != nil {
		s.t.Fatalf("statefulset status: %v", err)
	}
}

// update changes the template as kubectl set image (or another edit)
// would, and plays the StatefulSet controller's part: a new revision and
// the status naming it.
func (s *sts) update(rev string, tpl corev1.PodTemplateSpec) {
	s.t.Helper()
	ctx := context.Background()
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(s.obj), s.obj); err != nil {
		s.t.Fatal(err)
	}
	s.obj.Spec.Template = tpl
	if err := k8s.Update(ctx, s.obj); err != nil {
		s.t.Fatalf("update statefulset: %v", err)
	}
	// The revision holds the template as the API server defaulted it.
	s.revision(rev, s.obj.Spec.Template)
	s.status(rev)
}

// migrationOf waits for the rollout's Migration of pod to revision rev.
func migrationOf(t *testing.T, ns, pod, rev string) *v1alpha1.Migration {
	t.Helper()
	return waitMigration(t, ns, pod+"-"+strings.TrimPrefix(rev, "web-"))
}

// noMigration checks that pod has no Migration to rev right now.
func noMigration(t *testing.T, ns, pod, rev string) {
	t.Helper()
	noMigrationNamed(t, ns, pod+"-"+strings.TrimPrefix(rev, "web-"))
}

// noMigrationNamed checks that no Migration of that name exists now.
func noMigrationNamed(t *testing.T, ns, name string) {
	t.Helper()
	err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &v1alpha1.Migration{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("migration %s exists (%v); want none yet", name, err)
	}
}

// waitRevision waits until pod's revision label is rev.
func waitRevision(t *testing.T, ns, pod, rev string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		p := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: pod}, p); err != nil {
			t.Fatal(err)
		}
		if p.Labels[appsv1.StatefulSetRevisionLabel] == rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s stays at revision %s; want %s", pod, p.Labels[appsv1.StatefulSetRevisionLabel], rev)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// TestInPlaceOrder: an image-only change rolls out one pod at a time from
// the highest ordinal down to the partition, each through a Migration
// with target.image, each pod's revision label moving when its Migration
// completes; a manager restart mid-rollout resumes from the objects.
func TestInPlaceOrder(t *testing.T) {
	stop := startManager(t)
	ns := namespace(t, "inplace-order")
	s := newSTS(t, ns, 3, map[string]string{v1alpha1.UpdateAnnotation: string(v1alpha1.InPlaceIfPossible), v1alpha1.PartitionAnnotation: "1"})
	s.update("web-r2", template("streamer:2", "a"))

	m := migrationOf(t, ns, "web-2", "web-r2")
	if m.Spec.Target.Image != "streamer:2" || m.Spec.Source.Pod != "web-2" || m.Spec.Target.Pod != "web-2" || m.Spec.Target.Container != "streamer" {
		t.Fatalf("migration spec %+v; want web-2/streamer restarted in place with streamer:2", m.Spec)
	}
	if m.Labels[v1alpha1.WorkloadLabel] != "web" || m.Labels[v1alpha1.WorkloadKindLabel] != "StatefulSet" {
		t.Fatalf("migration labels %v", m.Labels)
	}
	noMigration(t, ns, "web-1", "web-r2") // max-unavailable 1

	// The manager goes away mid-rollout; its successor resumes.
	stop()
	finish(t, m, v1alpha1.PhaseCompleted, "restarted")
	startManager(t)
	waitRevision(t, ns, "web-2", "web-r2")
	m = migrationOf(t, ns, "web-1", "web-r2")
	finish(t, m, v1alpha1.PhaseCompleted, "restarted")
	waitRevision(t, ns, "web-1", "web-r2")
	waitEvent(t, ns, "web", "pod web-1 updated in place to revision web-r2")
	// web-0 is below the partition.
	noMigration(t, ns, "web-0", "web-r2")
}

// TestInPlaceNotImageOnly: a change beyond an image is not made in place:
// InPlaceIfPossible deletes the pod (its controller recreates it),
// InPlaceOnly stops with a Warning and changes nothing.
func TestInPlaceNotImageOnly(t *testing.T) {
	startManager(t)
	for _, mode := range []v1alpha1.UpdateMode{v1alpha1.InPlaceIfPossible, v1alpha1.InPlaceOnly} {
		t.Run(string(mode), func(t *testing.T) {
			ns := namespace(t, "not-image-only-"+strings.ToLower(string(mode)))
			s := newSTS(t, ns, 1, map[string]string{v1alpha1.UpdateAnnotation: string(mode)})
			s.update("web-r2", template("streamer:2", "b"))
			waitEvent(t, ns, "web", "pod web-0 cannot be updated in place", "more of the pod template than an image")
			if mode == v1alpha1.InPlaceIfPossible {
				// The Event comes just before the delete: wait for it.
				waitPodDeleted(t, ns, "web-0")
			} else {
				// InPlaceOnly decides with the Event and deletes nothing.
				p := &corev1.Pod{}
				if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web-0"}, p); err != nil || p.DeletionTimestamp != nil {
					t.Fatalf("pod web-0: %v, deleting %v; want it untouched under %s", err, p.DeletionTimestamp, mode)
				}
			}
			noMigration(t, ns, "web-0", "web-r2")
		})
	}
}

// TestInPlaceBadInput: each mistake is a Warning on the StatefulSet that
// says what to change, and nothing is touched.
func TestInPlaceBadInput(t *testing.T) {
	startManager(t)
	for _, c := range []struct {
		name        string
		annotations map[string]string
		strategy    appsv1.StatefulSetUpdateStrategyType
		says        string
	}{
		{"unknown-mode", map[string]string{v1alpha1.UpdateAnnotation: "Sometimes"}, appsv1.OnDeleteStatefulSetStrategyType, `"Sometimes" is neither InPlaceIfPossible nor InPlaceOnly`},
		{"rolling", map[string]string{v1alpha1.UpdateAnnotation: "InPlaceOnly"}, appsv1.RollingUpdateStatefulSetStrategyType, "set it to OnDelete"},
		{"bad-partition", map[string]string{v1alpha1.UpdateAnnotation: "InPlaceOnly", v1alpha1.PartitionAnnotation: "-2"}, appsv1.OnDeleteStatefulSetStrategyType, "not a whole number"},
		{"bad-container", map[string]string{v1alpha1.UpdateAnnotation: "InPlaceOnly"}, appsv1.OnDeleteStatefulSetStrategyType, "set the annotation handoff.dev/container"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := namespace(t, "bad-"+c.name)
			s := newSTS(t, ns, 1, c.annotations)
			tpl := template("streamer:2", "a")
			if c.name == "bad-container" {
				// Two containers now, and no annotation: which one is
				// the application's?
				s.obj.Spec.Template.Spec.Containers = append(s.obj.Spec.Template.Spec.Containers, corev1.Container{Name: "sidecar", Image: "side:1"})
				tpl.Spec.Containers = append(tpl.Spec.Containers, corev1.Container{Name: "sidecar", Image: "side:1"})
				p := &corev1.Pod{}
				if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web-0"}, p); err != nil {
					t.Fatal(err)
				}
				if err := k8s.Delete(context.Background(), p, client.GracePeriodSeconds(0)); err != nil {
					t.Fatal(err)
				}
				p2 := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0", Labels: p.Labels, OwnerReferences: p.OwnerReferences},
					Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "streamer", Image: "streamer:1"}, {Name: "sidecar", Image: "side:1"}}}}
				if err := k8s.Create(context.Background(), p2); err != nil {
					t.Fatal(err)
				}
				orig := p2.DeepCopy()
				p2.Status.Phase = corev1.PodRunning
				p2.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
				if err := k8s.Status().Patch(context.Background(), p2, client.MergeFrom(orig)); err != nil {
					t.Fatal(err)
				}
			}
			if c.strategy != appsv1.OnDeleteStatefulSetStrategyType {
				if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(s.obj), s.obj); err != nil {
					t.Fatal(err)
				}
				s.obj.Spec.UpdateStrategy = appsv1.StatefulSetUpdateStrategy{Type: c.strategy}
				if err := k8s.Update(context.Background(), s.obj); err != nil {
					t.Fatal(err)
				}
			}
			s.update("web-r2", tpl)
			waitEvent(t, ns, "web", c.says)
			noMigration(t, ns, "web-0", "web-r2")
			p := &corev1.Pod{}
			if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web-0"}, p); err != nil || p.DeletionTimestamp != nil {
				t.Fatalf("pod web-0 after the warning: %v, deleting %v; want it untouched", err, p.DeletionTimestamp)
			}
		})
	}
}

// TestInPlaceAgainToSameRevision: r1 → r2 → r1 → r2 of one pod: the last
// step is a rollout to a revision the pod had before, whose Migration of
// the first time is applied and no longer the pod's state: it must get a
// Migration of its own, not be counted as done.
func TestInPlaceAgainToSameRevision(t *testing.T) {
	startManager(t)
	ns := namespace(t, "inplace-again")
	s := newSTS(t, ns, 1, map[string]string{v1alpha1.UpdateAnnotation: string(v1alpha1.InPlaceOnly)})
	images := []string{"streamer:2", "streamer:1", "streamer:2"}
	revs := []string{"web-r2", "web-r1b", "web-r2"}
	for i, image := range images {
		rev := revs[i]
		if i < 2 {
			s.update(rev, template(image, "a"))
		} else {
			// Back to r2: the StatefulSet controller reuses the
			// revision of an equal template.
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(s.obj), s.obj); err != nil {
				t.Fatal(err)
			}
			s.obj.Spec.Template = template(image, "a")
			if err := k8s.Update(context.Background(), s.obj); err != nil {
				t.Fatal(err)
			}
			s.status(rev)
		}
		var m *v1alpha1.Migration
		deadline := time.Now().Add(bound)
		for {
			m = migrationOf(t, ns, "web-0", rev)
			if m.Annotations[v1alpha1.AppliedAnnotation] != "true" && m.Status.Phase == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("step %d: only the applied Migration %s of an earlier rollout to %s", i+1, m.Name, rev)
			}
			time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
		}
		if m.Spec.Target.Image != image {
			t.Fatalf("step %d: migration to %s sets image %s, want %s", i+1, rev, m.Spec.Target.Image, image)
		}
		// The agent restarts the container with the image; then the
		// Migration completes.
		p := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web-0"}, p); err != nil {
			t.Fatal(err)
		}
		orig := p.DeepCopy()
		p.Spec.Containers[0].Image = image
		if err := k8s.Patch(context.Background(), p, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
		finish(t, m, v1alpha1.PhaseCompleted, "restarted")
		waitRevision(t, ns, "web-0", rev)
	}
}

// TestInPlaceDaemonSet: a pod-network DaemonSet with OnDelete and the
// annotation is updated in place node by node; its pods' revision hash and
// template generation labels move, which is what the DaemonSet controller
// counts.
func TestInPlaceDaemonSet(t *testing.T) {
	startManager(t)
	ns := namespace(t, "inplace-ds")
	ctx := context.Background()
	ds := daemonSet(t, ns, "agentish", func(ds *appsv1.DaemonSet) {
		ds.Annotations = map[string]string{v1alpha1.UpdateAnnotation: string(v1alpha1.InPlaceIfPossible), appsv1.DeprecatedTemplateGeneration: "1"}
		ds.Spec.Template.Spec.HostNetwork = false
		ds.Spec.UpdateStrategy = appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
	})
	dsRevision := func(hash string, n int64, tpl corev1.PodTemplateSpec) {
		raw, err := json.Marshal(map[string]any{"spec": map[string]any{"template": tpl}})
		if err != nil {
			t.Fatal(err)
		}
		cr := &appsv1.ControllerRevision{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agentish-" + hash,
			Labels: map[string]string{appsv1.DefaultDaemonSetUniqueLabelKey: hash}}, Data: runtime.RawExtension{Raw: raw}, Revision: n}
		if err := ctrl.SetControllerReference(ds, cr, scheme); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, cr); err != nil {
			t.Fatal(err)
		}
	}
	dsRevision("h1", 1, ds.Spec.Template)
	for _, node := range []string{"node-b", "node-a"} {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agentish-" + node,
				Labels: map[string]string{"app": "agentish", appsv1.DefaultDaemonSetUniqueLabelKey: "h1", "pod-template-generation": "1"}},
			Spec: *ds.Spec.Template.Spec.DeepCopy(),
		}
		p.Spec.NodeName = node
		if err := ctrl.SetControllerReference(ds, p, scheme); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		orig := p.DeepCopy()
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if err := k8s.Status().Patch(ctx, p, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
	}
	// kubectl set image, and the DaemonSet controller's part.
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(ds), ds); err != nil {
		t.Fatal(err)
	}
	ds.Spec.Template.Spec.Containers[0].Image = "streamer:2"
	ds.Annotations[appsv1.DeprecatedTemplateGeneration] = "2"
	if err := k8s.Update(ctx, ds); err != nil {
		t.Fatal(err)
	}
	dsRevision("h2", 2, ds.Spec.Template)
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation}
	if err := k8s.Status().Update(ctx, ds); err != nil {
		t.Fatal(err)
	}

	// node-a first, then node-b.
	for _, node := range []string{"node-a", "node-b"} {
		m := waitMigration(t, ns, "agentish-"+node+"-h2")
		if m.Spec.Target.Image != "streamer:2" || m.Labels[v1alpha1.WorkloadKindLabel] != "DaemonSet" {
			t.Fatalf("migration %+v labels %v", m.Spec, m.Labels)
		}
		if node == "node-a" {
			noMigrationNamed(t, ns, "agentish-node-b-h2")
		}
		finish(t, m, v1alpha1.PhaseCompleted, "restarted")
		deadline := time.Now().Add(bound)
		for {
			p := &corev1.Pod{}
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "agentish-" + node}, p); err != nil {
				t.Fatal(err)
			}
			if p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] == "h2" && p.Labels["pod-template-generation"] == "2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod on %s has labels %v; want hash h2 and template generation 2", node, p.Labels)
			}
			time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
		}
	}
}

// TestInPlaceNoProcess: a pod whose application never joins the node
// agent (its Migration stays WaitingForProcesses) is not a hang: after the
// join grace it is handled as a pod that cannot be updated in place.
func TestInPlaceNoProcess(t *testing.T) {
	startManager(t)
	ns := namespace(t, "inplace-no-process")
	s := newSTS(t, ns, 1, map[string]string{v1alpha1.UpdateAnnotation: string(v1alpha1.InPlaceIfPossible)})
	s.update("web-r2", template("streamer:2", "a"))
	m := migrationOf(t, ns, "web-0", "web-r2")
	// The agent's report while it waits for a process that never comes.
	meta.SetStatusCondition(&m.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionTransferred, Status: metav1.ConditionUnknown,
		Reason: v1alpha1.ReasonWaitingForProcesses, Message: "waiting for the process of container streamer of source pod web-0 to join the agent socket"})
	m.Status.Phase = v1alpha1.PhaseScheduled
	if err := k8s.Status().Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ns, "web", "pod web-0 cannot be updated in place", "no process of it joined the node agent")
	// The Event comes just before the delete: wait for the delete.
	waitPodDeleted(t, ns, "web-0")
}

// waitPodDeleted waits until pod name is gone or being deleted.
func waitPodDeleted(t *testing.T, ns, name string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		p := &corev1.Pod{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, p)
		if apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s is not deleted; want it deleted (InPlaceIfPossible)", name)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// TestInPlaceBadTimeout: a timeout that is not a duration is a Warning
// that names it, and the rollout goes on with the default.
func TestInPlaceBadTimeout(t *testing.T) {
	startManager(t)
	ns := namespace(t, "inplace-bad-timeout")
	s := newSTS(t, ns, 1, map[string]string{v1alpha1.UpdateAnnotation: string(v1alpha1.InPlaceOnly), v1alpha1.TimeoutAnnotation: "forever"})
	s.update("web-r2", template("streamer:2", "a"))
	waitEvent(t, ns, "web", `handoff.dev/timeout="forever" is not a duration from 1s to 1h`)
	if m := migrationOf(t, ns, "web-0", "web-r2"); m.Spec.TimeoutOrDefault() != controllers.DefaultInPlaceTimeout {
		t.Fatalf("migration timeout %v; want the default %v", m.Spec.TimeoutOrDefault(), controllers.DefaultInPlaceTimeout)
	}
}
