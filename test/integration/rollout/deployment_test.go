package rollout

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// deploy is a Deployment in an in-place rollout as the webhook, the
// Deployment and ReplicaSet controllers and kubelet would leave it,
// written by hand: the test plays them all, and the node agent.
type deploy struct {
	t   *testing.T
	obj *appsv1.Deployment
	rs  *appsv1.ReplicaSet // the current one, hash "h1"
	ro  workload.InPlaceRollout
}

const hashLabel = appsv1.DefaultDeploymentUniqueLabelKey

// newDeploy creates a Deployment "web" of replicas pods of image
// streamer:1, with maxUnavailable and mode, its ReplicaSet web-h1 and the
// ReplicaSet's ready pods; then the change to streamer:2 as the webhook
// stores it: paused, with the rollout annotation.
func newDeploy(t *testing.T, ns string, replicas, maxUnavailable int, mode v1alpha1.UpdateMode) *deploy {
	t.Helper()
	ctx := context.Background()
	dp := &deploy{t: t, ro: workload.InPlaceRollout{ID: "r1", Container: "streamer", From: "streamer:1", To: "streamer:2"}}
	dp.obj = &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Annotations: map[string]string{v1alpha1.UpdateAnnotation: string(mode)}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(replicas)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: template("streamer:1", "a"),
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: ptr.To(intstr.FromInt32(int32(maxUnavailable)))}},
		},
	}
	if err := k8s.Create(ctx, dp.obj); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	dp.rs = dp.replicaSet("web-h1", "h1", dp.obj.Spec.Template, replicas)
	for i := range replicas {
		dp.pod(fmt.Sprintf("web-h1-%d", i))
	}
	dp.status(dp.rs)
	// The update, as the webhook lets it through.
	dp.edit(func(d *appsv1.Deployment) {
		d.Spec.Template = template("streamer:2", "a")
		d.Spec.Paused = true
		d.Annotations[v1alpha1.InPlaceRolloutAnnotation] = dp.ro.String()
	})
	return dp
}

// edit updates the Deployment.
func (dp *deploy) edit(f func(*appsv1.Deployment)) {
	dp.t.Helper()
	ctx := context.Background()
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(dp.obj), dp.obj); err != nil {
		dp.t.Fatal(err)
	}
	f(dp.obj)
	if err := k8s.Update(ctx, dp.obj); err != nil {
		dp.t.Fatalf("update deployment: %v", err)
	}
}

// replicaSet creates a ReplicaSet of the Deployment holding tpl, as the
// Deployment controller does.
func (dp *deploy) replicaSet(name, hash string, tpl corev1.PodTemplateSpec, replicas int) *appsv1.ReplicaSet {
	dp.t.Helper()
	tpl = *tpl.DeepCopy()
	tpl.Labels[hashLabel] = hash
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: dp.obj.Namespace, Name: name, Labels: tpl.Labels},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To(int32(replicas)), Template: tpl,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web", hashLabel: hash}}},
	}
	if err := ctrl.SetControllerReference(dp.obj, rs, scheme); err != nil {
		dp.t.Fatal(err)
	}
	if err := k8s.Create(context.Background(), rs); err != nil {
		dp.t.Fatalf("create replicaset %s: %v", name, err)
	}
	dp.status(rs)
	return rs
}

// status writes the ReplicaSet's status as its controller would.
func (dp *deploy) status(rs *appsv1.ReplicaSet) {
	dp.t.Helper()
	ctx := context.Background()
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(rs), rs); err != nil {
		dp.t.Fatal(err)
	}
	rs.Status = appsv1.ReplicaSetStatus{Replicas: *rs.Spec.Replicas, ReadyReplicas: *rs.Spec.Replicas, ObservedGeneration: rs.Generation}
	if err := k8s.Status().Update(ctx, rs); err != nil {
		dp.t.Fatalf("replicaset %s status: %v", rs.Name, err)
	}
}

// pod creates a ready pod of the current ReplicaSet.
func (dp *deploy) pod(name string) {
	dp.t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: dp.obj.Namespace, Name: name, Labels: dp.rs.Spec.Template.Labels},
		Spec:       *dp.rs.Spec.Template.Spec.DeepCopy(),
	}
	p.Spec.NodeName = "node-a"
	if err := ctrl.SetControllerReference(dp.rs, p, scheme); err != nil {
		dp.t.Fatal(err)
	}
	if err := k8s.Create(ctx, p); err != nil {
		dp.t.Fatalf("create pod %s: %v", name, err)
	}
	orig := p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if err := k8s.Status().Patch(ctx, p, client.MergeFrom(orig)); err != nil {
		dp.t.Fatalf("set pod %s ready: %v", name, err)
	}
}

// migrated plays the node agent for pod's Migration: the container's
// image patched, then the Migration completed.
func (dp *deploy) migrated(m *v1alpha1.Migration) {
	dp.t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.Target.Pod}, p); err != nil {
		dp.t.Fatal(err)
	}
	orig := p.DeepCopy()
	p.Spec.Containers[0].Image = m.Spec.Target.Image
	if err := k8s.Patch(ctx, p, client.MergeFrom(orig)); err != nil {
		dp.t.Fatalf("patch the image of pod %s: %v", p.Name, err)
	}
	finish(dp.t, m, v1alpha1.PhaseCompleted, "restarted")
}

// migrationOf waits for the rollout's Migration of pod.
func (dp *deploy) migrationOf(pod string) *v1alpha1.Migration {
	dp.t.Helper()
	return waitMigration(dp.t, dp.obj.Namespace, pod+"-"+dp.ro.ID)
}

// noMigration checks that pod has no Migration of the rollout.
func (dp *deploy) noMigration(pod string) {
	dp.t.Helper()
	err := k8s.Get(context.Background(), client.ObjectKey{Namespace: dp.obj.Namespace, Name: pod + "-" + dp.ro.ID}, &v1alpha1.Migration{})
	if !apierrors.IsNotFound(err) {
		dp.t.Fatalf("pod %s has a Migration (%v); want none", pod, err)
	}
}

// waitDeployment waits until cond holds of the Deployment.
func (dp *deploy) waitDeployment(what string, cond func(*appsv1.Deployment) bool) *appsv1.Deployment {
	dp.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		d := &appsv1.Deployment{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(dp.obj), d); err != nil {
			dp.t.Fatal(err)
		}
		if cond(d) {
			return d
		}
		if time.Now().After(deadline) {
			dp.t.Fatalf("deployment: not %s within %v: paused %v, annotations %v", what, bound, d.Spec.Paused, d.Annotations)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// resumed: unpaused, and the annotation gone.
func resumed(d *appsv1.Deployment) bool {
	_, marked := d.Annotations[v1alpha1.InPlaceRolloutAnnotation]
	return !d.Spec.Paused && !marked
}

// getRS reads a ReplicaSet.
func (dp *deploy) getRS(name string) (*appsv1.ReplicaSet, error) {
	rs := &appsv1.ReplicaSet{}
	err := k8s.Get(context.Background(), client.ObjectKey{Namespace: dp.obj.Namespace, Name: name}, rs)
	return rs, err
}

// TestDeploymentInPlace: the paused Deployment's pods are updated in
// place, maxUnavailable at a time, each through a Migration with
// target.image; a manager restart mid-rollout resumes from the objects;
// then the current ReplicaSet holds the new template under its own hash
// and the Deployment is resumed.
func TestDeploymentInPlace(t *testing.T) {
	stop := startManager(t)
	ns := namespace(t, "deploy-inplace")
	dp := newDeploy(t, ns, 3, 2, v1alpha1.InPlaceIfPossible)

	first, second := dp.migrationOf("web-h1-0"), dp.migrationOf("web-h1-1")
	for _, m := range []*v1alpha1.Migration{first, second} {
		if m.Spec.Target.Image != "streamer:2" || m.Spec.Source.Pod != m.Spec.Target.Pod || m.Spec.Target.Container != "streamer" ||
			m.Labels[v1alpha1.WorkloadLabel] != "web" || m.Labels[v1alpha1.WorkloadKindLabel] != "Deployment" || m.Labels[v1alpha1.RevisionLabel] != "r1" {
			t.Fatalf("migration %s: spec %+v labels %v", m.Name, m.Spec, m.Labels)
		}
	}
	dp.noMigration("web-h1-2") // maxUnavailable 2

	// The manager goes away mid-rollout; its successor resumes.
	stop()
	dp.migrated(first)
	dp.migrated(second)
	startManager(t)
	waitEvent(t, ns, "web", "pod web-h1-0 updated in place to image streamer:2")
	third := dp.migrationOf("web-h1-2")
	if d := dp.waitDeployment("paused", func(d *appsv1.Deployment) bool { return d.Spec.Paused }); !d.Spec.Paused {
		t.Fatal("resumed before every pod was updated")
	}
	dp.migrated(third)

	d := dp.waitDeployment("resumed", resumed)
	rs, err := dp.getRS("web-h1")
	if err != nil {
		t.Fatal(err)
	}
	if rs.Spec.Template.Labels[hashLabel] != "h1" || !workload.EqualIgnoreHash(&rs.Spec.Template, &d.Spec.Template) {
		t.Fatalf("replicaset web-h1 template %+v; want the Deployment's with pod-template-hash h1", rs.Spec.Template)
	}
	waitEvent(t, ns, "web", "ReplicaSet web-h1 now holds the new template")
	waitEvent(t, ns, "web", "handoff resumed the Deployment")
}

// TestDeploymentHandBack: removing handoff.dev/update mid-rollout resumes
// the Deployment, and no pod gets a Migration after.
func TestDeploymentHandBack(t *testing.T) {
	startManager(t)
	ns := namespace(t, "deploy-handback")
	dp := newDeploy(t, ns, 2, 1, v1alpha1.InPlaceIfPossible)
	dp.migrationOf("web-h1-0")
	dp.edit(func(d *appsv1.Deployment) { delete(d.Annotations, v1alpha1.UpdateAnnotation) })
	dp.waitDeployment("resumed", resumed)
	waitEvent(t, ns, "web", "handoff.dev/update removed", "handoff resumes the Deployment")
	dp.migrated(dp.migrationOf("web-h1-0"))
	// The completed Migration wakes the controller, which has nothing
	// more to do: the template stays where the Deployment controller
	// finds it old.
	waitEvent(t, ns, "web", "handoff resumes the Deployment")
	dp.noMigration("web-h1-1")
	if rs, err := dp.getRS("web-h1"); err != nil || rs.Spec.Template.Spec.Containers[0].Image != "streamer:1" {
		t.Fatalf("replicaset web-h1 after the hand-back: %v %+v; want its old template", err, rs.Spec.Template.Spec.Containers)
	}
}

// TestDeploymentNotInPlace: a failed Migration ends the rollout, resumed,
// under InPlaceIfPossible, and stops it, paused, under InPlaceOnly.
func TestDeploymentNotInPlace(t *testing.T) {
	startManager(t)
	for _, mode := range []v1alpha1.UpdateMode{v1alpha1.InPlaceIfPossible, v1alpha1.InPlaceOnly} {
		t.Run(string(mode), func(t *testing.T) {
			ns := namespace(t, "deploy-not-in-place-"+strings.ToLower(string(mode)))
			dp := newDeploy(t, ns, 2, 1, mode)
			finish(t, dp.migrationOf("web-h1-0"), v1alpha1.PhaseFailed, "the new process crashed")
			e := waitEvent(t, ns, "web", "pod web-h1-0 cannot be updated in place", "the new process crashed")
			if e.Type != corev1.EventTypeWarning {
				t.Errorf("event %s, want a Warning", e.Type)
			}
			if mode == v1alpha1.InPlaceIfPossible {
				dp.waitDeployment("resumed", resumed)
				return
			}
			waitEvent(t, ns, "web", "stays paused", "delete Migration web-h1-0-r1 to try it again")
			d := &appsv1.Deployment{}
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(dp.obj), d); err != nil || !d.Spec.Paused {
				t.Fatalf("deployment %v paused %v; want it to stay paused", err, d.Spec.Paused)
			}
			dp.noMigration("web-h1-1")
		})
	}
}

// TestDeploymentRollback: when an older ReplicaSet without pods holds the
// target template (kubectl rollout undo restored it), the current one
// takes the template and the older one goes, so that the Deployment
// controller does not scale the older one up.
func TestDeploymentRollback(t *testing.T) {
	startManager(t)
	ns := namespace(t, "deploy-rollback")
	dp := newDeploy(t, ns, 1, 1, v1alpha1.InPlaceIfPossible)
	dp.replicaSet("web-h0", "h0", template("streamer:2", "a"), 0)
	dp.migrated(dp.migrationOf("web-h1-0"))
	d := dp.waitDeployment("resumed", resumed)
	if _, err := dp.getRS("web-h0"); !apierrors.IsNotFound(err) {
		t.Fatalf("replicaset web-h0 holding the template too: %v; want it deleted", err)
	}
	rs, err := dp.getRS("web-h1")
	if err != nil || !workload.EqualIgnoreHash(&rs.Spec.Template, &d.Spec.Template) {
		t.Fatalf("replicaset web-h1: %v, template %+v; want the Deployment's", err, rs.Spec.Template)
	}
	waitEvent(t, ns, "web", "deleted ReplicaSet web-h0")
}
