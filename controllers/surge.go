package controllers

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
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

// DefaultSurgeTimeout is the timeout of the Migrations the surge path
// creates: long enough for the new pod's container to start and join.
const DefaultSurgeTimeout = 5 * time.Minute

// SurgeReconciler drives the native surge of opted-in DaemonSets: a pod
// with the handoff.dev/migrated readiness gate gets a Migration from the
// older pod of its DaemonSet on its node, and its gate opens when that
// Migration completes (at once when there is no older pod). The DaemonSet
// controller then counts the new pod available and deletes the old one,
// which holds no sockets any more.
type SurgeReconciler struct {
	Client client.Client
	// Recorder records Events on pods and DaemonSets; nil records none.
	Recorder events.EventRecorder
	// Timeout of the Migrations it creates; default DefaultSurgeTimeout.
	Timeout time.Duration
}

// +kubebuilder:rbac:groups="",resources=pods/status,verbs=get;patch
// +kubebuilder:rbac:groups=handoff.dev,resources=migrations,verbs=create
// +kubebuilder:rbac:groups=apps,resources=daemonsets,verbs=get;list;watch

// SetupWithManager registers the reconciler: gated pods, and the
// Migrations they own.
func (r *SurgeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	gated := predicate.NewPredicateFuncs(func(o client.Object) bool {
		p, ok := o.(*corev1.Pod)
		return ok && workload.HasGate(p)
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("surge").
		For(&corev1.Pod{}, builder.WithPredicates(gated)).
		Watches(&v1alpha1.Migration{}, handler.EnqueueRequestForOwner(mgr.GetScheme(), mgr.GetRESTMapper(), &corev1.Pod{}, handler.OnlyControllerOwner())).
		Watches(&appsv1.DaemonSet{}, handler.EnqueueRequestsFromMapFunc(r.podsOfDaemonSet)).
		Complete(r)
}

// Reconcile moves one gated pod forward: find its predecessor → create
// the Migration → open the gate when it completes (or fail as the
// workload asks).
func (r *SurgeReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	pod := &corev1.Pod{}
	if err := r.Client.Get(ctx, req.NamespacedName, pod); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !workload.Waiting(pod) || pod.DeletionTimestamp != nil || pod.Spec.NodeName == "" {
		return reconcile.Result{}, nil
	}
	if c := workload.GateCondition(pod); c != nil && c.Reason == v1alpha1.ReasonMigrationFailed {
		return reconcile.Result{}, r.retryFailed(ctx, pod)
	}
	mig := &v1alpha1.Migration{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: migrationName(pod)}, mig)
	switch {
	case apierrors.IsNotFound(err):
		return reconcile.Result{}, r.start(ctx, pod)
	case err != nil:
		return reconcile.Result{}, fmt.Errorf("get migration %s/%s: %w", pod.Namespace, migrationName(pod), err)
	case !metav1.IsControlledBy(mig, pod):
		return reconcile.Result{}, r.setGate(ctx, pod, corev1.ConditionFalse, v1alpha1.ReasonMigrationFailed,
			fmt.Sprintf("a Migration named %s exists and does not belong to pod %s: delete or rename it", mig.Name, pod.Name))
	}
	return reconcile.Result{}, r.follow(ctx, pod, mig)
}

// migrationName is the name of the Migration that moves the sockets to
// pod: the pod's own name, so that the two are found together.
func migrationName(pod *corev1.Pod) string { return pod.Name }

// start opens the gate of a pod without a predecessor, or creates the
// Migration from its predecessor.
func (r *SurgeReconciler) start(ctx context.Context, pod *corev1.Pod) error {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(pod.Namespace)); err != nil {
		return fmt.Errorf("list pods in %s: %w", pod.Namespace, err)
	}
	owner := metav1.GetControllerOf(pod)
	prev := workload.Predecessor(pod, pods.Items)
	if prev == nil {
		what := "the pod has no controller"
		if owner != nil {
			what = fmt.Sprintf("no older pod of %s %s serves on node %s", owner.Kind, owner.Name, pod.Spec.NodeName)
		}
		return r.setGate(ctx, pod, corev1.ConditionTrue, v1alpha1.ReasonNoPredecessor, what+": nothing to take over")
	}
	i, err := workload.AppContainer(pod)
	if err != nil {
		msg := fmt.Sprintf("pod %s: %v", pod.Name, err)
		r.event(pod, corev1.EventTypeWarning, v1alpha1.ReasonNotInjectable, msg)
		return r.setGate(ctx, pod, corev1.ConditionFalse, v1alpha1.ReasonMigrationFailed, msg)
	}
	container := pod.Spec.Containers[i].Name
	var dsAnnotations map[string]string
	if ds, err := r.daemonSet(ctx, pod); err != nil {
		return err
	} else if ds != nil {
		dsAnnotations = ds.Annotations
	}
	timeout, problem := migrationTimeout(r.Timeout, DefaultSurgeTimeout, pod.Annotations, dsAnnotations)
	if problem != "" {
		r.workloadEvent(pod, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, problem)
	}
	mig := &v1alpha1.Migration{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: pod.Namespace, Name: migrationName(pod),
			Labels: map[string]string{
				v1alpha1.WorkloadLabel: owner.Name, v1alpha1.WorkloadKindLabel: owner.Kind,
				v1alpha1.RevisionLabel: pod.Labels[appsv1.DefaultDaemonSetUniqueLabelKey],
			},
		},
		Spec: v1alpha1.MigrationSpec{
			Source:       v1alpha1.Endpoint{Pod: prev.Name, Container: container},
			Target:       v1alpha1.TargetEndpoint{Endpoint: v1alpha1.Endpoint{Pod: pod.Name, Container: container}},
			Timeout:      &metav1.Duration{Duration: timeout},
			SourcePolicy: v1alpha1.SourcePolicyDelete,
		},
	}
	if err := ctrl.SetControllerReference(pod, mig, r.Client.Scheme()); err != nil {
		return fmt.Errorf("own migration %s/%s by pod %s: %w", mig.Namespace, mig.Name, pod.Name, err)
	}
	if err := r.Client.Create(ctx, mig); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create migration %s/%s from pod %s: %w", mig.Namespace, mig.Name, prev.Name, err)
	}
	msg := fmt.Sprintf("Migration %s moves the sockets of pod %s (%s %s) on node %s to this pod", mig.Name, prev.Name, owner.Kind, owner.Name, pod.Spec.NodeName)
	log.FromContext(ctx).Info("surge handoff started", "migration", mig.Name, "from", prev.Name)
	r.event(pod, corev1.EventTypeNormal, v1alpha1.ReasonMigrating, msg)
	r.workloadEvent(pod, corev1.EventTypeNormal, v1alpha1.ReasonMigrating, msg)
	return r.setGate(ctx, pod, corev1.ConditionFalse, v1alpha1.ReasonMigrating, msg)
}

// follow opens the gate when the pod's Migration completed, and applies
// the workload's failure policy when it failed.
func (r *SurgeReconciler) follow(ctx context.Context, pod *corev1.Pod, mig *v1alpha1.Migration) error {
	switch mig.Status.Phase {
	case v1alpha1.PhaseCompleted:
		pause := ""
		if mig.Status.Pause != nil {
			pause = ", pause " + mig.Status.Pause.Duration.String()
		}
		msg := fmt.Sprintf("Migration %s moved every socket of pod %s to this pod%s", mig.Name, mig.Spec.Source.Pod, pause)
		r.event(pod, corev1.EventTypeNormal, v1alpha1.ReasonMigrated, msg)
		r.workloadEvent(pod, corev1.EventTypeNormal, v1alpha1.ReasonMigrated, msg)
		return r.setGate(ctx, pod, corev1.ConditionTrue, v1alpha1.ReasonMigrated, msg)
	case v1alpha1.PhaseFailed:
		return r.failed(ctx, pod, mig)
	}
	return nil
}

// failed applies handoff.dev/on-failure after the pod's Migration failed.
func (r *SurgeReconciler) failed(ctx context.Context, pod *corev1.Pod, mig *v1alpha1.Migration) error {
	policy, err := r.onFailure(ctx, pod)
	if err != nil {
		return err
	}
	if policy == v1alpha1.OnFailureRecreate {
		msg := fmt.Sprintf("Migration %s failed (%s); %s=%s: the gate opens and pod %s's clients are disconnected when the rollout deletes it", mig.Name, mig.Status.Message, v1alpha1.OnFailureAnnotation, policy, mig.Spec.Source.Pod)
		r.event(pod, corev1.EventTypeWarning, v1alpha1.ReasonRecreated, msg)
		return r.setGate(ctx, pod, corev1.ConditionTrue, v1alpha1.ReasonRecreated, msg)
	}
	msg := fmt.Sprintf("Migration %s failed (%s); pod %s serves on and the rollout waits (%s=%s). Fix the cause and delete this pod to try again, or set %s=%s on the workload to let the rollout replace the old pod without a handoff",
		mig.Name, mig.Status.Message, mig.Spec.Source.Pod, v1alpha1.OnFailureAnnotation, policy, v1alpha1.OnFailureAnnotation, v1alpha1.OnFailureRecreate)
	r.event(pod, corev1.EventTypeWarning, v1alpha1.ReasonMigrationFailed, msg)
	r.workloadEvent(pod, corev1.EventTypeWarning, v1alpha1.ReasonMigrationFailed, msg)
	return r.setGate(ctx, pod, corev1.ConditionFalse, v1alpha1.ReasonMigrationFailed, msg)
}

// retryFailed opens the gate of a pod whose handoff failed under Pause
// once the workload is switched to Recreate.
func (r *SurgeReconciler) retryFailed(ctx context.Context, pod *corev1.Pod) error {
	policy, err := r.onFailure(ctx, pod)
	if err != nil || policy != v1alpha1.OnFailureRecreate {
		return err
	}
	mig := &v1alpha1.Migration{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: migrationName(pod)}, mig); err != nil {
		return client.IgnoreNotFound(err)
	}
	return r.failed(ctx, pod, mig)
}

// onFailure is the failure policy: the annotation on the pod (from its
// template), else on its DaemonSet, else Pause. An unknown value is
// Pause, with a Warning.
func (r *SurgeReconciler) onFailure(ctx context.Context, pod *corev1.Pod) (v1alpha1.OnFailure, error) {
	v, set := pod.Annotations[v1alpha1.OnFailureAnnotation]
	if !set {
		ds, err := r.daemonSet(ctx, pod)
		if err != nil {
			return "", err
		}
		if ds != nil {
			v, set = ds.Annotations[v1alpha1.OnFailureAnnotation]
		}
	}
	switch p := v1alpha1.OnFailure(v); {
	case !set || p == v1alpha1.OnFailurePause:
		return v1alpha1.OnFailurePause, nil
	case p == v1alpha1.OnFailureRecreate:
		return p, nil
	}
	r.event(pod, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload,
		fmt.Sprintf("%s=%q is neither %s nor %s; acting as %s", v1alpha1.OnFailureAnnotation, v, v1alpha1.OnFailurePause, v1alpha1.OnFailureRecreate, v1alpha1.OnFailurePause))
	return v1alpha1.OnFailurePause, nil
}

// daemonSet is the pod's DaemonSet, nil when it has none (or it is gone).
func (r *SurgeReconciler) daemonSet(ctx context.Context, pod *corev1.Pod) (*appsv1.DaemonSet, error) {
	owner := metav1.GetControllerOf(pod)
	if owner == nil || owner.Kind != "DaemonSet" {
		return nil, nil
	}
	ds := &appsv1.DaemonSet{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: owner.Name}, ds)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get daemonset %s/%s: %w", pod.Namespace, owner.Name, err)
	}
	return ds, nil
}

// podsOfDaemonSet wakes a DaemonSet's gated pods when it changes: its
// on-failure annotation may now open a gate a failed handoff closed.
func (r *SurgeReconciler) podsOfDaemonSet(ctx context.Context, o client.Object) []reconcile.Request {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for i := range pods.Items {
		p := &pods.Items[i]
		if metav1.IsControlledBy(p, o) && workload.Waiting(p) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)})
		}
	}
	return reqs
}

// setGate writes the pod's Migrated condition if it changed.
func (r *SurgeReconciler) setGate(ctx context.Context, pod *corev1.Pod, status corev1.ConditionStatus, reason, msg string) error {
	if c := workload.GateCondition(pod); c != nil && c.Status == status && c.Reason == reason && c.Message == msg {
		return nil
	}
	orig := pod.DeepCopy()
	now := metav1.Now()
	cond := corev1.PodCondition{Type: v1alpha1.ConditionMigrated, Status: status, Reason: reason, Message: msg, LastTransitionTime: now}
	if c := workload.GateCondition(pod); c != nil {
		if c.Status == status {
			cond.LastTransitionTime = c.LastTransitionTime
		}
		*c = cond
	} else {
		pod.Status.Conditions = append(pod.Status.Conditions, cond)
	}
	if err := r.Client.Status().Patch(ctx, pod, client.StrategicMergeFrom(orig), client.FieldOwner(v1alpha1.ControllerFieldManager)); err != nil {
		return fmt.Errorf("set condition %s=%s on pod %s/%s: %w", v1alpha1.ConditionMigrated, status, pod.Namespace, pod.Name, err)
	}
	log.FromContext(ctx).Info("gate", "status", status, "reason", reason, "message", msg)
	return nil
}

// workloadEvent records an Event about pod's DaemonSet, related to pod.
func (r *SurgeReconciler) workloadEvent(pod *corev1.Pod, kind, reason, msg string) {
	if owner := metav1.GetControllerOf(pod); owner != nil && owner.Kind == "DaemonSet" {
		ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: owner.Name, UID: owner.UID}}
		record(r.Recorder, ds, pod, kind, reason, fmt.Sprintf("pod %s: %s", pod.Name, msg))
	}
}

func (r *SurgeReconciler) event(o client.Object, kind, reason, msg string) {
	record(r.Recorder, o, nil, kind, reason, msg)
}
