package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/migstatus"
)

// DefaultAgentGrace is how long past a Migration's deadline the controller
// waits for the agent's own report (the agent aborts at the deadline)
// before it declares DeadlineExceeded itself.
const DefaultAgentGrace = 10 * time.Second

// Name is the controller's name, as it appears in Events and metrics.
const Name = "handoff-controller"

// MigrationReconciler reconciles Migrations cluster-wide.
type MigrationReconciler struct {
	Client ctrl.Client
	// APIReader reads from the API server, past the cache: a pod the
	// cache does not have yet (created a moment before its Migration) is
	// looked up there before the Migration fails for want of it. nil
	// trusts the cache.
	APIReader ctrl.Reader
	// Recorder records an Event for every transition; nil records none.
	Recorder events.EventRecorder
	// AgentGrace defaults to DefaultAgentGrace.
	AgentGrace time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AgentSelector selects the node agent's pods. When set, a Migration
	// whose agent has not reported fails with AgentUnavailable once no
	// Running agent pod has been on its node for AgentGrace after
	// scheduling; nil leaves absent agents to the deadline.
	AgentSelector labels.Selector
}

// +kubebuilder:rbac:groups=handoff.dev,resources=migrations,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=handoff.dev,resources=migrations/status,verbs=get;patch;update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile moves one Migration forward: validate → schedule → follow the
// agent and the deadline → apply the source policy. Every step only edits
// mig; the deferred status apply writes the controller's fields once.
func (r *MigrationReconciler) Reconcile(ctx context.Context, req reconcile.Request) (res reconcile.Result, retErr error) {
	mig := &v1alpha1.Migration{}
	if err := r.Client.Get(ctx, req.NamespacedName, mig); err != nil {
		return reconcile.Result{}, ctrl.IgnoreNotFound(err)
	}
	before := mig.DeepCopy()
	defer func() {
		if err := r.writeStatus(ctx, before, mig); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()

	switch mig.Status.Phase {
	case v1alpha1.PhaseCompleted:
		return r.applySourcePolicy(ctx, mig)
	case v1alpha1.PhaseFailed:
		return reconcile.Result{}, nil
	}
	if mig.Labels[v1alpha1.NodeLabel] == "" {
		node, err := r.validate(ctx, mig)
		if err != nil || node == "" {
			return r.deadline(mig), err
		}
		if err := r.schedule(ctx, mig, node); err != nil {
			return reconcile.Result{}, err
		}
	} else {
		if err := r.markScheduled(mig, mig.Labels[v1alpha1.NodeLabel]); err != nil {
			return reconcile.Result{}, err
		}
		if err := r.checkNode(ctx, mig); err != nil {
			return reconcile.Result{}, err
		}
		res, err := r.checkAgent(ctx, mig)
		if err != nil || res.RequeueAfter > 0 {
			if d := r.deadline(mig); d.RequeueAfter > 0 && d.RequeueAfter < res.RequeueAfter {
				res = d
			}
			return res, err
		}
	}
	return r.deadline(mig), nil
}

func (r *MigrationReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// validate checks both pods and containers. It returns the node when all
// is well, "" when a condition explains why not.
func (r *MigrationReconciler) validate(ctx context.Context, mig *v1alpha1.Migration) (string, error) {
	invalid := func(reason, format string, args ...any) (string, error) {
		setCond(mig, v1alpha1.ConditionValidated, metav1.ConditionFalse, reason, fmt.Sprintf(format, args...))
		return "", nil
	}
	get := func(name, role, notFound string) (*corev1.Pod, string, error) {
		pod := &corev1.Pod{}
		key := types.NamespacedName{Namespace: mig.Namespace, Name: name}
		err := r.Client.Get(ctx, key, pod)
		if apierrors.IsNotFound(err) && r.APIReader != nil {
			// The cache may lag a pod created just before the Migration:
			// the failure is final, so ask the API server.
			err = r.APIReader.Get(ctx, key, pod)
		}
		if apierrors.IsNotFound(err) {
			return nil, notFound, nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("get %s pod %s/%s: %w", role, mig.Namespace, name, err)
		}
		return pod, "", nil
	}
	src, why, err := get(mig.Spec.Source.Pod, "source", v1alpha1.ReasonSourcePodNotFound)
	if err != nil || why != "" {
		if why != "" {
			return invalid(why, "source pod %s/%s does not exist: create it or fix spec.source.pod", mig.Namespace, mig.Spec.Source.Pod)
		}
		return "", err
	}
	dst, why, err := get(mig.Spec.Target.Pod, "target", v1alpha1.ReasonTargetPodNotFound)
	if err != nil || why != "" {
		if why != "" {
			return invalid(why, "target pod %s/%s does not exist: create it or fix spec.target.pod", mig.Namespace, mig.Spec.Target.Pod)
		}
		return "", err
	}
	for _, e := range []struct {
		role string
		pod  *corev1.Pod
		ep   v1alpha1.Endpoint
	}{{"source", src, mig.Spec.Source}, {"target", dst, mig.Spec.Target.Endpoint}} {
		if reason, msg := checkPod(e.role, e.pod, e.ep.Container); reason != "" {
			return invalid(reason, "%s", msg)
		}
	}
	if src.Spec.NodeName != dst.Spec.NodeName {
		return invalid(v1alpha1.ReasonDifferentNodes,
			"source pod %s runs on node %s and target pod %s on node %s: sockets move only between processes of one node; schedule the target on %s (for example with spec.nodeName or a node affinity)",
			src.Name, src.Spec.NodeName, dst.Name, dst.Spec.NodeName, src.Spec.NodeName)
	}
	if src.UID != dst.UID && !(src.Spec.HostNetwork && dst.Spec.HostNetwork) {
		return invalid(v1alpha1.ReasonNetworkNamespaceNotShared,
			"source pod %s and target pod %s have different network namespaces: a socket moved into another pod would keep serving an address the CNI has already taken away from it, so clients would be cut off; use two containers of one pod, two hostNetwork pods, or target.image to restart one container in place",
			src.Name, dst.Name)
	}
	setCond(mig, v1alpha1.ConditionValidated, metav1.ConditionTrue, v1alpha1.ReasonValid,
		fmt.Sprintf("source %s/%s and target %s/%s run on node %s and share a network namespace",
			src.Name, mig.Spec.Source.Container, dst.Name, mig.Spec.Target.Container, src.Spec.NodeName))
	return src.Spec.NodeName, nil
}

// checkPod returns a reason and message when pod cannot take part.
func checkPod(role string, pod *corev1.Pod, container string) (string, string) {
	if pod.DeletionTimestamp != nil {
		return v1alpha1.ReasonPodTerminating, fmt.Sprintf("%s pod %s is being deleted", role, pod.Name)
	}
	found := false
	for _, c := range pod.Spec.Containers {
		found = found || c.Name == container
	}
	if !found {
		names := make([]string, 0, len(pod.Spec.Containers))
		for _, c := range pod.Spec.Containers {
			names = append(names, c.Name)
		}
		return v1alpha1.ReasonContainerNotFound, fmt.Sprintf("%s pod %s has no container %q (it has %v): fix spec.%s.container", role, pod.Name, container, names, role)
	}
	if pod.Spec.NodeName == "" {
		return v1alpha1.ReasonNotScheduled, fmt.Sprintf("%s pod %s is not scheduled to a node yet; waiting until the deadline", role, pod.Name)
	}
	if pod.Status.Phase != corev1.PodRunning {
		return v1alpha1.ReasonPodNotRunning, fmt.Sprintf("%s pod %s is %s, not Running; waiting until the deadline", role, pod.Name, pod.Status.Phase)
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == container {
			if cs.State.Running == nil {
				return v1alpha1.ReasonContainerNotRunning, fmt.Sprintf("container %s of %s pod %s is not running; waiting until the deadline", container, role, pod.Name)
			}
			return "", ""
		}
	}
	return v1alpha1.ReasonContainerNotRunning, fmt.Sprintf("container %s of %s pod %s has no status yet; waiting until the deadline", container, role, pod.Name)
}

// schedule stamps the node label (the agents' cache selects on it), then
// records the scheduling in the status.
func (r *MigrationReconciler) schedule(ctx context.Context, mig *v1alpha1.Migration, node string) error {
	// Patch a copy: the answer carries the stored status, which would
	// overwrite the conditions this reconcile has set but not written.
	obj := mig.DeepCopy()
	patch := ctrl.MergeFrom(mig.DeepCopy())
	if obj.Labels == nil {
		obj.Labels = map[string]string{}
	}
	obj.Labels[v1alpha1.NodeLabel] = node
	if err := r.Client.Patch(ctx, obj, patch, ctrl.FieldOwner(v1alpha1.ControllerFieldManager)); err != nil {
		return fmt.Errorf("label migration %s/%s with node %s: %w", mig.Namespace, mig.Name, node, err)
	}
	mig.Labels, mig.ResourceVersion = obj.Labels, obj.ResourceVersion
	return r.markScheduled(mig, node)
}

// markScheduled records the scheduling in the status, if not yet done (a
// crash between the label and the status leaves only the label).
func (r *MigrationReconciler) markScheduled(mig *v1alpha1.Migration, node string) error {
	if meta.IsStatusConditionTrue(mig.Status.Conditions, v1alpha1.ConditionScheduled) {
		return nil
	}
	now := metav1.NewTime(r.now())
	mig.Status.NodeName = node
	mig.Status.StartTime = &now
	setCond(mig, v1alpha1.ConditionScheduled, metav1.ConditionTrue, v1alpha1.ReasonNodeAssigned,
		fmt.Sprintf("the node agent on %s performs the migration", node))
	return nil
}

// checkNode fails a scheduled Migration whose node is gone: no agent will
// ever report, so waiting for the deadline would only delay the news.
func (r *MigrationReconciler) checkNode(ctx context.Context, mig *v1alpha1.Migration) error {
	node := &corev1.Node{}
	err := r.Client.Get(ctx, types.NamespacedName{Name: mig.Status.NodeName}, node)
	if apierrors.IsNotFound(err) {
		r.fail(mig, v1alpha1.ReasonNodeNotFound, fmt.Sprintf("node %s, where the migration was scheduled, no longer exists; the pods on it are gone too", mig.Status.NodeName))
		return nil
	}
	if err != nil {
		return fmt.Errorf("get node %s of migration %s/%s: %w", mig.Status.NodeName, mig.Namespace, mig.Name, err)
	}
	return nil
}

// checkAgent fails a scheduled Migration that no agent has picked up when
// no agent pod runs on its node: waiting for the deadline would only delay
// the news. It allows AgentGrace after scheduling, for an agent restarting.
func (r *MigrationReconciler) checkAgent(ctx context.Context, mig *v1alpha1.Migration) (reconcile.Result, error) {
	if r.AgentSelector == nil || mig.Status.Phase.Final() || mig.Status.StartTime == nil ||
		meta.FindStatusCondition(mig.Status.Conditions, v1alpha1.ConditionTransferred) != nil {
		return reconcile.Result{}, nil
	}
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, ctrl.MatchingLabelsSelector{Selector: r.AgentSelector}, ctrl.MatchingFields{nodeIndex: mig.Status.NodeName}); err != nil {
		return reconcile.Result{}, fmt.Errorf("list node agent pods on %s for migration %s/%s: %w", mig.Status.NodeName, mig.Namespace, mig.Name, err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			return reconcile.Result{}, nil
		}
	}
	if left := mig.Status.StartTime.Add(r.grace()).Sub(r.now()); left > 0 {
		return reconcile.Result{RequeueAfter: left}, nil
	}
	r.fail(mig, v1alpha1.ReasonAgentUnavailable, fmt.Sprintf("no handoff node agent pod (%s) runs on node %s, so nobody can perform the migration; nothing was moved. Is the agent DaemonSet scheduled there (taints, node selector)?", r.AgentSelector, mig.Status.NodeName))
	return reconcile.Result{}, nil
}

// deadline fails a Migration whose time is up and otherwise asks to be
// called again when it will be.
func (r *MigrationReconciler) deadline(mig *v1alpha1.Migration) reconcile.Result {
	s := summarize(&mig.Status)
	if s.Phase.Final() {
		return reconcile.Result{}
	}
	start := mig.CreationTimestamp.Time
	failAt := start.Add(mig.Spec.TimeoutOrDefault())
	scheduled := mig.Status.StartTime != nil
	if scheduled {
		failAt = mig.Status.StartTime.Add(mig.Spec.TimeoutOrDefault() + r.grace())
	}
	left := failAt.Sub(r.now())
	if left > 0 {
		return reconcile.Result{RequeueAfter: left}
	}
	switch {
	case !scheduled:
		r.fail(mig, s.Reason, fmt.Sprintf("not ready within the timeout of %v: %s", mig.Spec.TimeoutOrDefault(), s.Message))
	case meta.FindStatusCondition(mig.Status.Conditions, v1alpha1.ConditionTransferred) == nil:
		r.fail(mig, v1alpha1.ReasonDeadlineExceeded, fmt.Sprintf("the node agent on %s never reported within the timeout of %v: is the handoff node agent running on that node?", mig.Status.NodeName, mig.Spec.TimeoutOrDefault()))
	default:
		r.fail(mig, v1alpha1.ReasonDeadlineExceeded, fmt.Sprintf("the node agent on %s did not report an outcome within the timeout of %v (last: %s); if it is gone, the source process keeps its sockets and serves on", mig.Status.NodeName, mig.Spec.TimeoutOrDefault(), s.Message))
	}
	return reconcile.Result{}
}

func (r *MigrationReconciler) grace() time.Duration {
	if r.AgentGrace > 0 {
		return r.AgentGrace
	}
	return DefaultAgentGrace
}

// fail makes the Migration final: Failed, with reason and message.
func (r *MigrationReconciler) fail(mig *v1alpha1.Migration, reason, msg string) {
	mig.Status.Phase = v1alpha1.PhaseFailed
	setCond(mig, v1alpha1.ConditionReady, metav1.ConditionFalse, reason, msg)
}

// applySourcePolicy deletes the source pod gracefully after success when
// asked (and it is a different pod), once.
func (r *MigrationReconciler) applySourcePolicy(ctx context.Context, mig *v1alpha1.Migration) (reconcile.Result, error) {
	if meta.IsStatusConditionTrue(mig.Status.Conditions, v1alpha1.ConditionSourceHandled) {
		return reconcile.Result{}, nil
	}
	if mig.Spec.SourcePolicyOrDefault() != v1alpha1.SourcePolicyDelete || mig.Spec.SamePod() {
		setCond(mig, v1alpha1.ConditionSourceHandled, metav1.ConditionTrue, v1alpha1.ReasonSourceKept, fmt.Sprintf("source pod %s kept, as spec.sourcePolicy asks", mig.Spec.Source.Pod))
		return reconcile.Result{}, nil
	}
	pod := &corev1.Pod{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: mig.Namespace, Name: mig.Spec.Source.Pod}, pod)
	if err == nil && mig.Status.SourceContainerID != "" && !hasContainerID(pod, mig.Status.SourceContainerID) {
		// A pod of the same name, but not the one the sockets left: leave it.
		setCond(mig, v1alpha1.ConditionSourceHandled, metav1.ConditionTrue, v1alpha1.ReasonSourceKept,
			fmt.Sprintf("pod %s no longer holds source container %s (it was replaced); not deleted", pod.Name, mig.Status.SourceContainerID))
		return reconcile.Result{}, nil
	}
	if err == nil {
		err = r.Client.Delete(ctx, pod, ctrl.Preconditions{UID: &pod.UID})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		setCond(mig, v1alpha1.ConditionSourceHandled, metav1.ConditionFalse, v1alpha1.ReasonSourceDeleteFailed, fmt.Sprintf("delete source pod %s: %v", mig.Spec.Source.Pod, err))
		return reconcile.Result{}, fmt.Errorf("delete source pod %s/%s of migration %s: %w", mig.Namespace, mig.Spec.Source.Pod, mig.Name, err)
	}
	setCond(mig, v1alpha1.ConditionSourceHandled, metav1.ConditionTrue, v1alpha1.ReasonSourceDeleted, fmt.Sprintf("source pod %s deleted gracefully", mig.Spec.Source.Pod))
	return reconcile.Result{}, nil
}

func hasContainerID(pod *corev1.Pod, id string) bool {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.ContainerID == id {
			return true
		}
	}
	return false
}

func setCond(mig *v1alpha1.Migration, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&mig.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: mig.Generation,
	})
}

// writeStatus summarises, and applies the controller's part of the status
// if it changed, with an Event for each phase transition.
func (r *MigrationReconciler) writeStatus(ctx context.Context, before, mig *v1alpha1.Migration) error {
	s := summarize(&mig.Status)
	mig.Status.Phase = s.Phase
	mig.Status.Message = s.Message
	mig.Status.ObservedGeneration = mig.Generation
	setCond(mig, v1alpha1.ConditionReady, s.Status, s.Reason, s.Message)
	if s.Phase.Final() && mig.Status.CompletionTime == nil {
		now := metav1.NewTime(r.now())
		mig.Status.CompletionTime = &now
	}
	old, err := migstatus.Controller.Owned(&before.Status)
	if err != nil {
		return err
	}
	cur, err := migstatus.Controller.Owned(&mig.Status)
	if err != nil {
		return err
	}
	if equality.Semantic.DeepEqual(old, cur) {
		return nil
	}
	// Apply only over what this reconcile read: a cache that lags behind
	// our own last write could otherwise turn a final phase back.
	if err := migstatus.Controller.ApplyIfUnchanged(ctx, r.Client, mig); err != nil {
		if apierrors.IsConflict(err) {
			log.FromContext(ctx).V(1).Info("status changed since read; retrying", "migration", ctrl.ObjectKeyFromObject(mig))
			return nil // the change that conflicted requeues us
		}
		return err
	}
	log.FromContext(ctx).Info("migration status", "phase", s.Phase, "reason", s.Reason, "message", s.Message)
	r.events(before, mig)
	return nil
}

// events records one Event per change of the phase or of a controller
// condition, so `kubectl describe` tells the story.
func (r *MigrationReconciler) events(before, mig *v1alpha1.Migration) {
	if r.Recorder == nil {
		return
	}
	for _, typ := range []string{v1alpha1.ConditionValidated, v1alpha1.ConditionScheduled, v1alpha1.ConditionReady, v1alpha1.ConditionSourceHandled} {
		c := meta.FindStatusCondition(mig.Status.Conditions, typ)
		if c == nil || c.Status == metav1.ConditionUnknown {
			continue
		}
		if o := meta.FindStatusCondition(before.Status.Conditions, typ); o != nil && o.Status == c.Status && o.Reason == c.Reason {
			continue
		}
		kind := corev1.EventTypeNormal
		if c.Status == metav1.ConditionFalse {
			kind = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(mig, nil, kind, c.Reason, typ, "%s", c.Message)
	}
	if before.Status.Phase != mig.Status.Phase && !mig.Status.Phase.Final() {
		r.Recorder.Eventf(mig, nil, corev1.EventTypeNormal, string(mig.Status.Phase), "Phase", "%s", mig.Status.Message)
	}
}
