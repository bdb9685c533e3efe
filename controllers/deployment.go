package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// DeploymentReconciler runs the in-place rollouts of Deployments that the
// Deployment webhook (controllers/deployhook) paused: it finds the
// current ReplicaSet (the one holding the template the rollout started
// from), updates its pods in place, at most maxUnavailable at a time,
// through a Migration with target.image each, then moves the Deployment's
// new template into that ReplicaSet (keeping its pod-template-hash), so
// that the Deployment controller counts it as the new one, and resumes
// the Deployment. Everything it needs is in the objects, so a new leader
// resumes where the last one stopped. A pod that cannot be updated in
// place ends the rollout under InPlaceIfPossible (the Deployment is
// resumed and its controller replaces the pods) and stops it, paused,
// under InPlaceOnly; removing handoff.dev/update hands the Deployment
// back.
type DeploymentReconciler struct {
	Client client.Client
	// Recorder records Events on the Deployment; nil records none.
	Recorder events.EventRecorder
	// Timeout of each pod's Migration; default DefaultInPlaceTimeout,
	// overridden by v1alpha1.TimeoutAnnotation on the pod or Deployment.
	Timeout time.Duration
	// JoinGrace defaults to DefaultJoinGrace.
	JoinGrace time.Duration
}

func (r *DeploymentReconciler) joinGrace() time.Duration {
	if r.JoinGrace > 0 {
		return r.JoinGrace
	}
	return DefaultJoinGrace
}

// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=apps,resources=replicasets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=handoff.dev,resources=migrations,verbs=get;list;watch;create;patch

// SetupWithManager registers the reconciler for Deployments in an
// in-place rollout, their ReplicaSets, pods and Migrations.
func (r *DeploymentReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	marked := predicate.NewPredicateFuncs(func(o client.Object) bool {
		_, ok := o.GetAnnotations()[v1alpha1.InPlaceRolloutAnnotation]
		return ok
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("deployment-inplace").
		For(&appsv1.Deployment{}, builder.WithPredicates(marked)).
		Owns(&appsv1.ReplicaSet{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.deploymentOfPod)).
		Watches(&v1alpha1.Migration{}, handler.EnqueueRequestsFromMapFunc(workloadOf("Deployment"))).
		Complete(r)
}

// deploymentOfPod maps a ReplicaSet's pod to the ReplicaSet's Deployment.
func (r *DeploymentReconciler) deploymentOfPod(ctx context.Context, o client.Object) []reconcile.Request {
	owner := metav1.GetControllerOfNoCopy(o)
	if owner == nil || owner.Kind != "ReplicaSet" {
		return nil
	}
	rs := &appsv1.ReplicaSet{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: o.GetNamespace(), Name: owner.Name}, rs); err != nil {
		return nil
	}
	d := metav1.GetControllerOfNoCopy(rs)
	if d == nil || d.Kind != "Deployment" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: d.Name}}}
}

// deployRollout is one Deployment's in-place rollout as read at the start
// of a reconcile.
type deployRollout struct {
	d    *appsv1.Deployment
	mode v1alpha1.UpdateMode
	ro   workload.InPlaceRollout
	// current is the ReplicaSet whose pods are updated: it holds the
	// template the rollout started from, or, once moved, the new one.
	current *appsv1.ReplicaSet
	// others are the Deployment's other ReplicaSets.
	others         []*appsv1.ReplicaSet
	pods           []*corev1.Pod                    // current's, by name
	migrations     map[string][]*v1alpha1.Migration // the Deployment's, by pod
	maxUnavailable int
}

// deployStep is one step of the rollout: done says the reconcile goes on
// to the next step; otherwise it ends with res.
type deployStep func(ctx context.Context, dr *deployRollout) (done bool, res reconcile.Result, err error)

// Reconcile moves one Deployment's in-place rollout forward: check the
// opt-in → read the ReplicaSets, pods and Migrations → update the pods in
// place → move the new template into the current ReplicaSet → resume.
func (r *DeploymentReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	d := &appsv1.Deployment{}
	if err := r.Client.Get(ctx, req.NamespacedName, d); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if _, marked := d.Annotations[v1alpha1.InPlaceRolloutAnnotation]; !marked {
		return reconcile.Result{}, nil
	}
	dr := &deployRollout{d: d}
	for _, step := range []deployStep{r.checkOptIn, r.load, r.checkCurrent, r.updatePods, r.moveTemplate, r.resume} {
		done, res, err := step(ctx, dr)
		if apierrors.IsConflict(err) {
			// Changed since it was read: read again.
			return reconcile.Result{Requeue: true}, nil
		}
		if err != nil || !done {
			return res, err
		}
	}
	return reconcile.Result{}, nil
}

// checkOptIn hands the Deployment back when the rollout cannot go on:
// its annotation is unreadable, handoff.dev/update was removed or is not
// a mode, or it was resumed by someone else.
func (r *DeploymentReconciler) checkOptIn(ctx context.Context, dr *deployRollout) (bool, reconcile.Result, error) {
	d := dr.d
	ro, _, err := workload.InPlaceRolloutOf(d)
	if err != nil {
		return false, reconcile.Result{}, r.handBack(ctx, dr, nil, corev1.EventTypeWarning, v1alpha1.ReasonHandedBack,
			fmt.Sprintf("%v; handoff resumes the Deployment and its controller rolls out", err))
	}
	dr.ro = ro
	mode, set := d.Annotations[v1alpha1.UpdateAnnotation]
	switch {
	case !set:
		return false, reconcile.Result{}, r.handBack(ctx, dr, nil, corev1.EventTypeNormal, v1alpha1.ReasonHandedBack,
			fmt.Sprintf("%s removed during the in-place rollout %s: handoff resumes the Deployment, and its controller rolls out the rest (replacing pods)", v1alpha1.UpdateAnnotation, ro.ID))
	case !workload.ValidMode(mode):
		return false, reconcile.Result{}, r.handBack(ctx, dr, nil, corev1.EventTypeWarning, v1alpha1.ReasonHandedBack,
			fmt.Sprintf("%s=%q is neither %s nor %s: the in-place rollout %s ends, handoff resumes the Deployment, and its controller rolls out the rest (replacing pods)",
				v1alpha1.UpdateAnnotation, mode, v1alpha1.InPlaceIfPossible, v1alpha1.InPlaceOnly, ro.ID))
	case !d.Spec.Paused:
		// Resumed while the webhook was not there to end the rollout.
		return false, reconcile.Result{}, r.handBack(ctx, dr, nil, corev1.EventTypeNormal, v1alpha1.ReasonHandedBack,
			fmt.Sprintf("resumed during the in-place rollout %s: it ends, and the Deployment controller rolls out the rest", ro.ID))
	}
	dr.mode = v1alpha1.UpdateMode(mode)
	dr.maxUnavailable = maxUnavailable(d)
	return true, reconcile.Result{}, nil
}

// maxUnavailable is the Deployment's rollingUpdate.maxUnavailable as a
// number of pods (a percentage rounds down, as the Deployment controller
// does), at least 1; 1 without one.
func maxUnavailable(d *appsv1.Deployment) int {
	ru := d.Spec.Strategy.RollingUpdate
	if ru == nil || ru.MaxUnavailable == nil {
		return 1
	}
	replicas := 1
	if d.Spec.Replicas != nil {
		replicas = int(*d.Spec.Replicas)
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxUnavailable, replicas, false)
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// load reads the Deployment's ReplicaSets, the current one's pods and
// the Deployment's Migrations.
func (r *DeploymentReconciler) load(ctx context.Context, dr *deployRollout) (bool, reconcile.Result, error) {
	d := dr.d
	var rss appsv1.ReplicaSetList
	if err := r.Client.List(ctx, &rss, client.InNamespace(d.Namespace)); err != nil {
		return false, reconcile.Result{}, fmt.Errorf("list replicasets of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	var owned []*appsv1.ReplicaSet
	for i := range rss.Items {
		if metav1.IsControlledBy(&rss.Items[i], d) && rss.Items[i].DeletionTimestamp == nil {
			owned = append(owned, &rss.Items[i])
		}
	}
	dr.current = currentReplicaSet(d, dr.ro, owned)
	for _, rs := range owned {
		if rs != dr.current {
			dr.others = append(dr.others, rs)
		}
	}
	if dr.current == nil {
		return true, reconcile.Result{}, nil // checkCurrent says so
	}
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(d.Namespace)); err != nil {
		return false, reconcile.Result{}, fmt.Errorf("list pods of replicaset %s/%s: %w", d.Namespace, dr.current.Name, err)
	}
	for i := range pods.Items {
		if metav1.IsControlledBy(&pods.Items[i], dr.current) {
			dr.pods = append(dr.pods, &pods.Items[i])
		}
	}
	slices.SortFunc(dr.pods, func(a, b *corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	var migs v1alpha1.MigrationList
	if err := r.Client.List(ctx, &migs, client.InNamespace(d.Namespace),
		client.MatchingLabels{v1alpha1.WorkloadLabel: d.Name, v1alpha1.WorkloadKindLabel: "Deployment"}); err != nil {
		return false, reconcile.Result{}, fmt.Errorf("list migrations of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	dr.migrations = map[string][]*v1alpha1.Migration{}
	for i := range migs.Items {
		m := &migs.Items[i]
		dr.migrations[m.Spec.Target.Pod] = append(dr.migrations[m.Spec.Target.Pod], m)
	}
	return true, reconcile.Result{}, nil
}

// currentReplicaSet is the ReplicaSet that holds the template the rollout
// started from (the Deployment's with the application's image set back),
// or else the Deployment's own template (the rollout moved it there
// already): among several, one with pods, then the oldest, as the
// Deployment controller's FindNewReplicaSet picks.
func currentReplicaSet(d *appsv1.Deployment, ro workload.InPlaceRollout, rss []*appsv1.ReplicaSet) *appsv1.ReplicaSet {
	slices.SortStableFunc(rss, func(a, b *appsv1.ReplicaSet) int {
		if hasPods(a) != hasPods(b) {
			if hasPods(a) {
				return -1
			}
			return 1
		}
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	from := workload.WithImage(&d.Spec.Template, ro.Container, ro.From)
	for _, tpl := range []*corev1.PodTemplateSpec{from, &d.Spec.Template} {
		for _, rs := range rss {
			if workload.EqualIgnoreHash(&rs.Spec.Template, tpl) {
				return rs
			}
		}
	}
	return nil
}

// hasPods reports whether a ReplicaSet wants or has pods.
func hasPods(rs *appsv1.ReplicaSet) bool {
	return (rs.Spec.Replicas != nil && *rs.Spec.Replicas > 0) || rs.Status.Replicas > 0
}

// checkCurrent ends the rollout when there is no current ReplicaSet, or
// another ReplicaSet still has pods (the Deployment was still rolling an
// earlier change out): one ReplicaSet's pods are what it updates.
func (r *DeploymentReconciler) checkCurrent(ctx context.Context, dr *deployRollout) (bool, reconcile.Result, error) {
	if dr.current == nil {
		return false, reconcile.Result{}, r.notInPlace(ctx, dr, nil, nil,
			fmt.Sprintf("no ReplicaSet of it holds the template the in-place rollout %s started from (container %s at %s)", dr.ro.ID, dr.ro.Container, dr.ro.From))
	}
	for _, rs := range dr.others {
		if hasPods(rs) {
			return false, reconcile.Result{}, r.notInPlace(ctx, dr, nil, nil,
				fmt.Sprintf("ReplicaSet %s still has pods beside %s: the Deployment was still rolling out an earlier change", rs.Name, dr.current.Name))
		}
	}
	return true, reconcile.Result{}, nil
}

// updatePods takes each pod of the current ReplicaSet a step: apply the
// outcome of its Migration, or start one while fewer than maxUnavailable
// pods are unready or updating. done once every pod runs the target
// image and the ReplicaSet has all its pods.
func (r *DeploymentReconciler) updatePods(ctx context.Context, dr *deployRollout) (bool, reconcile.Result, error) {
	busy, left := 0, 0
	var todo []*corev1.Pod
	res := reconcile.Result{}
	for _, p := range dr.pods {
		if p.DeletionTimestamp != nil || !podReady(p) {
			busy++
		}
		if p.DeletionTimestamp != nil {
			left++
			continue
		}
		mine := inPlaceMigrationName(p, dr.ro)
		var mig *v1alpha1.Migration
		earlier := false
		for _, m := range dr.migrations[p.Name] {
			switch {
			case !metav1.IsControlledBy(m, p):
				// Another pod's of the same name.
			case m.Name == mine:
				mig = m
			case !m.Status.Phase.Final():
				earlier = true // an earlier target's, still running
			}
		}
		switch {
		case mig != nil && mig.Status.Phase == v1alpha1.PhaseCompleted:
			if err := r.applied(ctx, dr, p, mig); err != nil {
				return false, res, err
			}
		case mig != nil && mig.Status.Phase == v1alpha1.PhaseFailed:
			return false, res, r.notInPlace(ctx, dr, p, mig, fmt.Sprintf("its Migration %s failed: %s", mig.Name, mig.Status.Message))
		case mig != nil:
			left++
			if podReady(p) {
				busy++
			}
			res.RequeueAfter = r.joinGrace() / 3 // looked at again in case its process never joins
			if c := meta.FindStatusCondition(mig.Status.Conditions, v1alpha1.ConditionTransferred); c != nil &&
				c.Reason == v1alpha1.ReasonWaitingForProcesses && time.Since(mig.CreationTimestamp.Time) > r.joinGrace() {
				return false, res, r.notInPlace(ctx, dr, p, mig, fmt.Sprintf("no process of it joined the node agent within %v (does the application link the handoff SDK?)", r.joinGrace()))
			}
		case earlier:
			left++
			if podReady(p) {
				busy++
			}
		case containerImage(p, dr.ro.Container) == dr.ro.To:
			// Done (or made with the target image).
		default:
			left++
			todo = append(todo, p)
		}
	}
	for _, p := range todo {
		if busy >= dr.maxUnavailable || !podReady(p) {
			continue
		}
		busy++
		if stop, err := r.startPod(ctx, dr, p); err != nil || stop {
			return false, res, err
		}
	}
	rs := dr.current
	want := int32(0)
	if rs.Spec.Replicas != nil {
		want = *rs.Spec.Replicas
	}
	if left > 0 || int32(len(dr.pods)) != want || rs.Status.Replicas != want || rs.Status.ObservedGeneration < rs.Generation {
		return false, res, nil
	}
	return true, reconcile.Result{}, nil
}

// inPlaceMigrationName names the Migration that updates pod p in the rollout.
func inPlaceMigrationName(p *corev1.Pod, ro workload.InPlaceRollout) string {
	return p.Name + "-" + ro.ID
}

// containerImage is the image of pod p's container, "" without it.
func containerImage(p *corev1.Pod, container string) string {
	for _, c := range p.Spec.Containers {
		if c.Name == container {
			return c.Image
		}
	}
	return ""
}

// startPod creates pod p's Migration; stop says the rollout goes no
// further now.
func (r *DeploymentReconciler) startPod(ctx context.Context, dr *deployRollout, p *corev1.Pod) (stop bool, err error) {
	if containerImage(p, dr.ro.Container) == "" {
		return true, r.notInPlace(ctx, dr, p, nil, fmt.Sprintf("it has no container %s", dr.ro.Container))
	}
	timeout, problem := migrationTimeout(r.Timeout, DefaultInPlaceTimeout, p.Annotations, dr.d.Annotations)
	if problem != "" {
		r.event(dr.d, p, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, problem)
	}
	c := dr.ro.Container
	mig, err := createInPlaceMigration(ctx, r.Client, p, inPlaceMigration{
		name: inPlaceMigrationName(p, dr.ro), container: c, image: dr.ro.To,
		workload: dr.d.Name, kind: "Deployment", revision: dr.ro.ID, timeout: timeout,
	})
	if err != nil {
		return false, err
	}
	r.event(dr.d, p, corev1.EventTypeNormal, v1alpha1.ReasonUpdatingInPlace,
		fmt.Sprintf("pod %s: Migration %s restarts container %s with image %s while the node agent holds its sockets", p.Name, mig.Name, c, dr.ro.To))
	return false, nil
}

// applied marks a completed Migration applied, with an Event, once.
func (r *DeploymentReconciler) applied(ctx context.Context, dr *deployRollout, p *corev1.Pod, mig *v1alpha1.Migration) error {
	if mig.Annotations[v1alpha1.AppliedAnnotation] == "true" {
		return nil
	}
	if err := markApplied(ctx, r.Client, mig); err != nil {
		return err
	}
	pause := ""
	if mig.Status.Pause != nil {
		pause = "; pause " + mig.Status.Pause.Duration.Round(time.Millisecond).String()
	}
	r.event(dr.d, p, corev1.EventTypeNormal, v1alpha1.ReasonUpdatedInPlace,
		fmt.Sprintf("pod %s updated in place to image %s by Migration %s%s", p.Name, mig.Spec.Target.Image, mig.Name, pause))
	log.FromContext(ctx).Info("pod updated in place", "pod", p.Name, "image", mig.Spec.Target.Image, "migration", mig.Name)
	return nil
}

// moveTemplate writes the Deployment's template into the current
// ReplicaSet, keeping its pod-template-hash label, so that the Deployment
// controller finds it as the new ReplicaSet. An older ReplicaSet without
// pods that already holds that template (the revision kubectl rollout
// undo restored) is deleted first: the Deployment controller would take
// the oldest of the two as new, and scale it up.
func (r *DeploymentReconciler) moveTemplate(ctx context.Context, dr *deployRollout) (bool, reconcile.Result, error) {
	d, rs := dr.d, dr.current
	for _, o := range dr.others {
		if !workload.EqualIgnoreHash(&o.Spec.Template, &d.Spec.Template) {
			continue
		}
		if err := r.Client.Delete(ctx, o, client.Preconditions{UID: &o.UID, ResourceVersion: &o.ResourceVersion}); client.IgnoreNotFound(err) != nil {
			return false, reconcile.Result{}, fmt.Errorf("delete replicaset %s/%s, which holds the new template too: %w", o.Namespace, o.Name, err)
		}
		r.event(d, nil, corev1.EventTypeNormal, v1alpha1.ReasonTemplateMoved,
			fmt.Sprintf("deleted ReplicaSet %s (revision %s, no pods), which holds the new template too: ReplicaSet %s holds it now", o.Name, o.Annotations["deployment.kubernetes.io/revision"], rs.Name))
	}
	if workload.EqualIgnoreHash(&rs.Spec.Template, &d.Spec.Template) {
		return true, reconcile.Result{}, nil
	}
	if err := r.keepHistory(ctx, dr); err != nil {
		return false, reconcile.Result{}, err
	}
	orig := rs.DeepCopy()
	hash := rs.Spec.Template.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	rs.Spec.Template = *d.Spec.Template.DeepCopy()
	if hash != "" {
		if rs.Spec.Template.Labels == nil {
			rs.Spec.Template.Labels = map[string]string{}
		}
		rs.Spec.Template.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
	}
	if err := r.Client.Patch(ctx, rs, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}), client.FieldOwner(v1alpha1.ControllerFieldManager)); err != nil {
		return false, reconcile.Result{}, fmt.Errorf("move the new template of deployment %s/%s into replicaset %s: %w", d.Namespace, d.Name, rs.Name, err)
	}
	r.event(d, nil, corev1.EventTypeNormal, v1alpha1.ReasonTemplateMoved,
		fmt.Sprintf("ReplicaSet %s now holds the new template (container %s at %s): its pods were updated in place", rs.Name, dr.ro.Container, dr.ro.To))
	return true, reconcile.Result{}, nil
}

// revisionAnnotation is the Deployment controller's revision number of a
// ReplicaSet, which kubectl rollout history and undo read.
const revisionAnnotation = "deployment.kubernetes.io/revision"

// keepHistory keeps the template the current ReplicaSet is about to lose,
// with its revision number, in a ReplicaSet of its own with no pods (its
// pod-template-hash label made unique, so that it selects none), so that
// kubectl rollout undo can go back to it: undo restores the template of
// the ReplicaSet with the second-highest revision, and once the Deployment
// is resumed the Deployment controller gives the current ReplicaSet the
// next revision. Undoing is then an image-only change like any other, done
// in place, after which this ReplicaSet, holding the new template too, is
// deleted (moveTemplate).
func (r *DeploymentReconciler) keepHistory(ctx context.Context, dr *deployRollout) error {
	d, rs := dr.d, dr.current
	hash := rs.Spec.Template.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	id := strings.ReplaceAll(dr.ro.ID, "-", "")
	id = id[:min(len(id), 10)]
	key := hash + "-" + id
	hist := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: rs.Namespace, Name: rs.Name + "-" + id,
			Labels: maps.Clone(rs.Spec.Template.Labels),
			// The Deployment's annotations, as the Deployment controller
			// copies them onto its ReplicaSets: kubectl rollout undo
			// writes a ReplicaSet's annotations back into the
			// Deployment, handoff.dev/update among them.
			Annotations: maps.Clone(rs.Annotations),
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](0),
			Selector: rs.Spec.Selector.DeepCopy(),
			Template: *rs.Spec.Template.DeepCopy(),
		},
	}
	if hist.Annotations == nil {
		hist.Annotations = map[string]string{}
	}
	delete(hist.Annotations, v1alpha1.InPlaceRolloutAnnotation)
	hist.Annotations[revisionAnnotation] = rs.Annotations[revisionAnnotation]
	if hist.Labels == nil {
		hist.Labels = map[string]string{}
	}
	hist.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = key
	if hist.Spec.Template.Labels == nil {
		hist.Spec.Template.Labels = map[string]string{}
	}
	hist.Spec.Template.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = key
	if hist.Spec.Selector == nil {
		hist.Spec.Selector = &metav1.LabelSelector{}
	}
	if hist.Spec.Selector.MatchLabels == nil {
		hist.Spec.Selector.MatchLabels = map[string]string{}
	}
	hist.Spec.Selector.MatchLabels[appsv1.DefaultDeploymentUniqueLabelKey] = key
	if err := ctrl.SetControllerReference(d, hist, r.Client.Scheme()); err != nil {
		return fmt.Errorf("own replicaset %s/%s by deployment %s: %w", hist.Namespace, hist.Name, d.Name, err)
	}
	if err := r.Client.Create(ctx, hist); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("keep the replaced template of deployment %s/%s in replicaset %s: %w", d.Namespace, d.Name, hist.Name, err)
	}
	r.event(d, nil, corev1.EventTypeNormal, v1alpha1.ReasonHistoryKept,
		fmt.Sprintf("kept the template ReplicaSet %s replaces (revision %s, container %s at %s) in ReplicaSet %s, with no pods, for kubectl rollout undo",
			rs.Name, rs.Annotations[revisionAnnotation], dr.ro.Container, dr.ro.From, hist.Name))
	return nil
}

// resume ends the rollout: the Deployment unpaused and its annotation
// removed, in one update that fails if it changed since it was read.
func (r *DeploymentReconciler) resume(ctx context.Context, dr *deployRollout) (bool, reconcile.Result, error) {
	if err := r.unpause(ctx, dr.d); err != nil {
		return false, reconcile.Result{}, err
	}
	r.event(dr.d, nil, corev1.EventTypeNormal, v1alpha1.ReasonRolloutDone,
		fmt.Sprintf("every pod of ReplicaSet %s runs %s in container %s, updated in place (rollout %s): handoff resumed the Deployment", dr.current.Name, dr.ro.To, dr.ro.Container, dr.ro.ID))
	return true, reconcile.Result{}, nil
}

// unpause resumes a Deployment handoff paused and removes its annotation.
func (r *DeploymentReconciler) unpause(ctx context.Context, d *appsv1.Deployment) error {
	orig := d.DeepCopy()
	d.Spec.Paused = false
	delete(d.Annotations, v1alpha1.InPlaceRolloutAnnotation)
	if err := r.Client.Patch(ctx, d, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}), client.FieldOwner(v1alpha1.ControllerFieldManager)); err != nil {
		return fmt.Errorf("resume deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	return nil
}

// handBack ends the rollout before it is done: the Deployment resumed,
// for its controller to roll out as it would without handoff.
func (r *DeploymentReconciler) handBack(ctx context.Context, dr *deployRollout, p *corev1.Pod, kind, reason, msg string) error {
	if err := r.unpause(ctx, dr.d); err != nil {
		return err
	}
	r.event(dr.d, p, kind, reason, msg)
	log.FromContext(ctx).Info("in-place rollout handed back", "deployment", dr.d.Name, "why", msg)
	return nil
}

// notInPlace handles what cannot be updated in place: under
// InPlaceIfPossible the rollout ends and the Deployment controller
// replaces the pods; under InPlaceOnly it stops, paused, with a Warning
// that says how to go on. mig, if any, is the pod's Migration.
func (r *DeploymentReconciler) notInPlace(ctx context.Context, dr *deployRollout, p *corev1.Pod, mig *v1alpha1.Migration, why string) error {
	what := "the Deployment cannot be updated in place"
	if p != nil {
		what = fmt.Sprintf("pod %s cannot be updated in place", p.Name)
	}
	if dr.mode == v1alpha1.InPlaceOnly {
		retry := ""
		if mig != nil {
			retry = fmt.Sprintf(", or delete Migration %s to try it again", mig.Name)
		}
		r.event(dr.d, p, corev1.EventTypeWarning, v1alpha1.ReasonNotInPlace, fmt.Sprintf(
			"%s: %s; %s=%s, so the rollout stops here and the Deployment stays paused. Set %s (or remove the annotation, or kubectl rollout resume) to let the Deployment controller replace the pods, or set the image back to %s (kubectl rollout undo refuses a paused Deployment)%s",
			what, why, v1alpha1.UpdateAnnotation, dr.mode, v1alpha1.InPlaceIfPossible, dr.ro.From, retry))
		return nil
	}
	if mig != nil {
		if err := markApplied(ctx, r.Client, mig); err != nil {
			return err
		}
	}
	return r.handBack(ctx, dr, p, corev1.EventTypeWarning, v1alpha1.ReasonNotInPlace, fmt.Sprintf(
		"%s: %s; the in-place rollout %s ends, handoff resumes the Deployment, and its controller replaces the pods (their clients are disconnected)", what, why, dr.ro.ID))
}

func (r *DeploymentReconciler) event(d *appsv1.Deployment, related *corev1.Pod, kind, reason, msg string) {
	record(r.Recorder, d, related, kind, reason, msg)
}
