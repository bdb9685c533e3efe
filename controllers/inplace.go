package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// DefaultInPlaceTimeout is the timeout of each pod's in-place Migration:
// the agent waits that long for the container's process to join, to
// export, and for its successor to claim the sockets.
const DefaultInPlaceTimeout = 2 * time.Minute

// DefaultJoinGrace is how long a ready pod's Migration may wait for the
// container's process to join the node agent before the rollout treats
// the pod as one whose application does not speak the protocol.
const DefaultJoinGrace = 15 * time.Second

// InPlaceReconciler rolls opted-in StatefulSets out in place. A
// StatefulSet with updateStrategy OnDelete and the handoff.dev/update
// annotation is left alone by its own controller when its template
// changes; this one then takes its pods from the highest ordinal down to
// the partition, at most max-unavailable at a time: a pod whose change is
// one of its application container's image gets a Migration with
// target.image (its container restarts while the node agent holds its
// sockets), and once that completes, the pod's controller-revision-hash
// label moves to the update revision, so that the StatefulSet's status
// counts it as updated. Other pods are deleted (InPlaceIfPossible), which
// the StatefulSet controller answers with a pod of the update revision,
// or stop the rollout (InPlaceOnly).
type InPlaceReconciler struct {
	Client client.Client
	// Recorder records Events on the StatefulSet and its pods; nil
	// records none.
	Recorder events.EventRecorder
	// Timeout of each pod's Migration; default DefaultInPlaceTimeout.
	Timeout time.Duration
	// JoinGrace defaults to DefaultJoinGrace.
	JoinGrace time.Duration
}

func (r *InPlaceReconciler) joinGrace() time.Duration {
	if r.JoinGrace > 0 {
		return r.JoinGrace
	}
	return DefaultJoinGrace
}

// +kubebuilder:rbac:groups=apps,resources=statefulsets,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=controllerrevisions,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=patch
// +kubebuilder:rbac:groups=handoff.dev,resources=migrations,verbs=create;delete

// SetupWithManager registers the reconciler for annotated StatefulSets,
// their pods and the pods' Migrations.
func (r *InPlaceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("inplace").
		For(&appsv1.StatefulSet{}, builder.WithPredicates(annotated)).
		Owns(&corev1.Pod{}).
		Watches(&v1alpha1.Migration{}, handler.EnqueueRequestsFromMapFunc(workloadOf("StatefulSet"))).
		Complete(r)
}

// rollout is one workload's in-place rollout as read at the start of a
// reconcile. The kinds differ in how a pod names its revision and which
// labels say it is updated; the rest is shared.
type rollout struct {
	obj            client.Object // the StatefulSet or DaemonSet
	kind           string
	mode           v1alpha1.UpdateMode
	update         string // the update revision's ControllerRevision name
	hash           string // its hash, in Migration names and labels
	updateTemplate *corev1.PodTemplateSpec
	partition      int
	maxUnavailable int
	pods           []*corev1.Pod // in the order they are updated
	// revisionOf is the ControllerRevision name of a pod's revision.
	revisionOf func(*corev1.Pod) string
	// moveLabels sets a pod's labels to say it is of the update revision.
	moveLabels func(*corev1.Pod)
}

// Reconcile moves one StatefulSet's rollout forward: check the spec →
// read the revisions and pods → take each pod a step.
func (r *InPlaceReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	sts := &appsv1.StatefulSet{}
	if err := r.Client.Get(ctx, req.NamespacedName, sts); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	ro, problem := checkOptIn(sts, "StatefulSet", sts.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType, string(sts.Spec.UpdateStrategy.Type))
	if problem != "" {
		r.event(sts, nil, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, problem)
		return reconcile.Result{}, nil
	}
	if sts.Status.UpdateRevision == "" || sts.Status.ObservedGeneration < sts.Generation {
		return reconcile.Result{}, nil // the StatefulSet controller has not caught up
	}
	ro.update = sts.Status.UpdateRevision
	ro.hash = strings.TrimPrefix(ro.update, sts.Name+"-")
	ro.revisionOf = func(p *corev1.Pod) string { return p.Labels[appsv1.StatefulSetRevisionLabel] }
	ro.moveLabels = func(p *corev1.Pod) { p.Labels[appsv1.StatefulSetRevisionLabel] = ro.update }
	if err := r.load(ctx, ro); err != nil {
		return reconcile.Result{}, err
	}
	// Highest ordinal first, as the StatefulSet controller rolls out.
	slices.SortFunc(ro.pods, func(a, b *corev1.Pod) int { return ordinal(b) - ordinal(a) })
	return r.step(ctx, ro)
}

// checkOptIn validates a workload's opt-in; a problem is a sentence that
// says what to change. onDelete says whether its update strategy is
// OnDelete (strategy names the one it has).
func checkOptIn(obj client.Object, kind string, onDelete bool, strategy string) (*rollout, string) {
	a := obj.GetAnnotations()
	ro := &rollout{obj: obj, kind: kind, mode: v1alpha1.UpdateMode(a[v1alpha1.UpdateAnnotation]), maxUnavailable: 1}
	if ro.mode != v1alpha1.InPlaceIfPossible && ro.mode != v1alpha1.InPlaceOnly {
		return nil, fmt.Sprintf("%s=%q is neither %s nor %s: nothing is updated in place", v1alpha1.UpdateAnnotation, ro.mode, v1alpha1.InPlaceIfPossible, v1alpha1.InPlaceOnly)
	}
	if !onDelete {
		return nil, fmt.Sprintf("%s is set but updateStrategy.type is %q: set it to OnDelete, so that the %s controller leaves the pods to handoff (until then it replaces them itself)", v1alpha1.UpdateAnnotation, strategy, kind)
	}
	for _, an := range []struct {
		key string
		to  *int
		min int
	}{{v1alpha1.PartitionAnnotation, &ro.partition, 0}, {v1alpha1.MaxUnavailableAnnotation, &ro.maxUnavailable, 1}} {
		if v, ok := a[an.key]; ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < an.min {
				return nil, fmt.Sprintf("%s=%q is not a whole number of at least %d", an.key, v, an.min)
			}
			*an.to = n
		}
	}
	return ro, ""
}

// load reads the update revision's template and the workload's pods.
func (r *InPlaceReconciler) load(ctx context.Context, ro *rollout) error {
	ns := ro.obj.GetNamespace()
	tpl, err := r.revisionTemplate(ctx, ns, ro.update)
	if err != nil {
		return err
	}
	ro.updateTemplate = tpl
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("list pods of %s %s/%s: %w", strings.ToLower(ro.kind), ns, ro.obj.GetName(), err)
	}
	for i := range pods.Items {
		if metav1.IsControlledBy(&pods.Items[i], ro.obj) {
			ro.pods = append(ro.pods, &pods.Items[i])
		}
	}
	return nil
}

// revisionTemplate decodes the pod template a StatefulSet's or
// DaemonSet's ControllerRevision holds (a patch of the spec that replaces
// the template).
func (r *InPlaceReconciler) revisionTemplate(ctx context.Context, ns, name string) (*corev1.PodTemplateSpec, error) {
	cr := &appsv1.ControllerRevision{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, cr); err != nil {
		return nil, fmt.Errorf("get controllerrevision %s/%s: %w", ns, name, err)
	}
	var data struct {
		Spec struct {
			Template corev1.PodTemplateSpec `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(cr.Data.Raw, &data); err != nil {
		return nil, fmt.Errorf("decode the template of controllerrevision %s/%s: %w", ns, name, err)
	}
	return &data.Spec.Template, nil
}

// ordinal is a StatefulSet pod's ordinal, from its name.
func ordinal(p *corev1.Pod) int {
	n, err := strconv.Atoi(p.Name[strings.LastIndexByte(p.Name, '-')+1:])
	if err != nil {
		return -1
	}
	return n
}

// step takes each pod, highest ordinal first, one step: apply the outcome
// of its Migration, or start one while fewer than maxUnavailable pods are
// unready or updating.
func (r *InPlaceReconciler) step(ctx context.Context, ro *rollout) (reconcile.Result, error) {
	type todo struct {
		pod *corev1.Pod
		mig *v1alpha1.Migration // nil before it has one
	}
	var pods []todo
	busy := 0
	for _, p := range ro.pods {
		if p.DeletionTimestamp != nil || !podReady(p) {
			busy++
		}
		// The partition is a StatefulSet's: its pods have ordinals.
		below := ro.kind == "StatefulSet" && ordinal(p) < ro.partition
		if below || ro.revisionOf(p) == ro.update || p.DeletionTimestamp != nil {
			continue
		}
		mig := &v1alpha1.Migration{}
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: r.migrationName(ro, p)}, mig)
		switch {
		case apierrors.IsNotFound(err):
			mig = nil
		case err != nil:
			return reconcile.Result{}, fmt.Errorf("get migration %s/%s: %w", p.Namespace, r.migrationName(ro, p), err)
		case mig.Annotations[v1alpha1.AppliedAnnotation] == "true" && !ownOutcome(p, mig):
			// An earlier rollout's, to the same revision (the pod has
			// moved on since, or is another pod of the same name):
			// this rollout needs one of its own.
			if err := r.Client.Delete(ctx, mig); client.IgnoreNotFound(err) != nil {
				return reconcile.Result{}, fmt.Errorf("delete migration %s/%s of an earlier rollout: %w", mig.Namespace, mig.Name, err)
			}
			return reconcile.Result{Requeue: true}, nil
		case !mig.Status.Phase.Final() && podReady(p):
			busy++
		}
		pods = append(pods, todo{p, mig})
	}
	res := reconcile.Result{}
	for _, t := range pods {
		var stop bool
		var err error
		if t.mig != nil && !t.mig.Status.Phase.Final() {
			// Looked at again in case its process never joins.
			res.RequeueAfter = r.joinGrace() / 3
		}
		switch {
		case t.mig != nil:
			stop, err = r.follow(ctx, ro, t.pod, t.mig)
		case busy < ro.maxUnavailable && podReady(t.pod):
			busy++
			stop, err = r.start(ctx, ro, t.pod)
		}
		if err != nil || stop {
			return res, err
		}
	}
	return res, nil
}

// migrationName names the Migration that updates pod p to the update
// revision: the pod and the revision's hash.
func (r *InPlaceReconciler) migrationName(ro *rollout, p *corev1.Pod) string {
	return p.Name + "-" + ro.hash
}

// follow applies the outcome of pod p's Migration once it has one. stop
// says the rollout goes no further now.
func (r *InPlaceReconciler) follow(ctx context.Context, ro *rollout, p *corev1.Pod, mig *v1alpha1.Migration) (stop bool, err error) {
	switch mig.Status.Phase {
	case v1alpha1.PhaseCompleted:
		if err := markApplied(ctx, r.Client, mig); err != nil {
			return false, err
		}
		orig := p.DeepCopy()
		ro.moveLabels(p)
		if err := r.Client.Patch(ctx, p, client.MergeFrom(orig), client.FieldOwner(v1alpha1.ControllerFieldManager)); err != nil {
			return false, fmt.Errorf("move pod %s/%s to revision %s: %w", p.Namespace, p.Name, ro.update, err)
		}
		pause := ""
		if mig.Status.Pause != nil {
			pause = "; pause " + mig.Status.Pause.Duration.Round(time.Millisecond).String()
		}
		r.event(ro.obj, p, corev1.EventTypeNormal, v1alpha1.ReasonUpdatedInPlace, fmt.Sprintf("pod %s updated in place to revision %s by Migration %s%s", p.Name, ro.update, mig.Name, pause))
		log.FromContext(ctx).Info("pod updated in place", "pod", p.Name, "revision", ro.update, "migration", mig.Name)
		return false, nil
	case v1alpha1.PhaseFailed:
		return r.notInPlace(ctx, ro, p, mig, fmt.Sprintf("its Migration %s failed: %s", mig.Name, mig.Status.Message))
	}
	if c := meta.FindStatusCondition(mig.Status.Conditions, v1alpha1.ConditionTransferred); c != nil &&
		c.Reason == v1alpha1.ReasonWaitingForProcesses && time.Since(mig.CreationTimestamp.Time) > r.joinGrace() {
		return r.notInPlace(ctx, ro, p, mig, fmt.Sprintf("no process of it joined the node agent within %v (does the application link the handoff SDK?)", r.joinGrace()))
	}
	return false, nil
}

// start creates pod p's Migration, or handles a pod whose change is not
// one of images.
func (r *InPlaceReconciler) start(ctx context.Context, ro *rollout, p *corev1.Pod) (stop bool, err error) {
	container, image, why := r.eligible(ctx, ro, p)
	if why != "" {
		return r.notInPlace(ctx, ro, p, nil, why)
	}
	timeout, problem := migrationTimeout(r.Timeout, DefaultInPlaceTimeout, p.Annotations, ro.obj.GetAnnotations())
	if problem != "" {
		r.event(ro.obj, p, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, problem)
	}
	mig, err := createInPlaceMigration(ctx, r.Client, p, inPlaceMigration{
		name: r.migrationName(ro, p), container: container, image: image,
		workload: ro.obj.GetName(), kind: ro.kind, revision: ro.hash, timeout: timeout,
	})
	if err != nil {
		return false, err
	}
	r.event(ro.obj, p, corev1.EventTypeNormal, v1alpha1.ReasonUpdatingInPlace,
		fmt.Sprintf("pod %s: Migration %s restarts container %s with image %s while the node agent holds its sockets", p.Name, mig.Name, container, image))
	return false, nil
}

// eligible says whether pod p can move to the update revision by changing
// its application container's image alone (OpenKruise's rule for in-place
// updates), and which container and image; else why not.
func (r *InPlaceReconciler) eligible(ctx context.Context, ro *rollout, p *corev1.Pod) (container, image, why string) {
	i, err := workload.AppContainer(p)
	if err != nil {
		return "", "", err.Error()
	}
	container = p.Spec.Containers[i].Name
	from, err := r.revisionTemplate(ctx, p.Namespace, ro.revisionOf(p))
	if err != nil {
		return "", "", fmt.Sprintf("its revision %q cannot be read (%v)", ro.revisionOf(p), err)
	}
	image, err = workload.ImageOnly(from, ro.updateTemplate, container)
	if err != nil {
		return "", "", err.Error()
	}
	return container, image, ""
}

// notInPlace handles a pod that cannot be updated in place: deleted under
// InPlaceIfPossible (the StatefulSet controller recreates it at the update
// revision), the rollout stopped under InPlaceOnly.
func (r *InPlaceReconciler) notInPlace(ctx context.Context, ro *rollout, p *corev1.Pod, mig *v1alpha1.Migration, why string) (stop bool, err error) {
	if ro.mode == v1alpha1.InPlaceOnly {
		r.event(ro.obj, p, corev1.EventTypeWarning, v1alpha1.ReasonNotInPlace, fmt.Sprintf("pod %s cannot be updated in place: %s; %s=%s, so the rollout stops here. Set %s or roll back the template", p.Name, why, v1alpha1.UpdateAnnotation, ro.mode, v1alpha1.InPlaceIfPossible))
		return true, nil
	}
	if mig != nil {
		if err := markApplied(ctx, r.Client, mig); err != nil {
			return false, err
		}
	}
	r.event(ro.obj, p, corev1.EventTypeWarning, v1alpha1.ReasonNotInPlace,
		fmt.Sprintf("pod %s cannot be updated in place: %s; deleting it so that the %s controller recreates it at revision %s (its clients are disconnected)", p.Name, why, ro.kind, ro.update))
	if err := r.Client.Delete(ctx, p, client.Preconditions{UID: &p.UID}); client.IgnoreNotFound(err) != nil {
		return false, fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return true, nil
}

// ownOutcome reports whether an applied Migration is the one that last
// changed pod p: it is p's (not an earlier pod's of the same name), it
// completed, and p's container still runs its image. Its revision label is
// then being moved (or the cache has not seen the move yet), and applying
// it again is safe; any other applied Migration is an earlier rollout's.
func ownOutcome(p *corev1.Pod, mig *v1alpha1.Migration) bool {
	if !metav1.IsControlledBy(mig, p) || mig.Status.Phase != v1alpha1.PhaseCompleted {
		return false
	}
	for _, c := range p.Spec.Containers {
		if c.Name == mig.Spec.Target.Container {
			return c.Image == mig.Spec.Target.Image
		}
	}
	return false
}

func (r *InPlaceReconciler) event(o client.Object, related *corev1.Pod, kind, reason, msg string) {
	record(r.Recorder, o, related, kind, reason, msg)
}
