// Package workload holds the decisions about opted-in workloads that both
// the manager and the node agent make from the same Pod objects, so that
// they cannot disagree: whether a pod waits for the Migrated gate, and
// which older pod on its node is its predecessor.
package workload

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// HasGate reports whether the pod carries the Migrated readiness gate.
func HasGate(pod *corev1.Pod) bool {
	for _, g := range pod.Spec.ReadinessGates {
		if g.ConditionType == v1alpha1.ConditionMigrated {
			return true
		}
	}
	return false
}

// GateCondition is the pod's Migrated condition, or nil.
func GateCondition(pod *corev1.Pod) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == v1alpha1.ConditionMigrated {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

// GateOpen reports whether the pod's Migrated condition is True.
func GateOpen(pod *corev1.Pod) bool {
	c := GateCondition(pod)
	return c != nil && c.Status == corev1.ConditionTrue
}

// Waiting reports whether the pod still waits for its gate: it has one,
// and it is not True.
func Waiting(pod *corev1.Pod) bool { return HasGate(pod) && !GateOpen(pod) }

// Predecessor is the pod that hands over to pod: among pods (the pods of
// pod's node), a running pod of the same controller, not being deleted,
// that serves: it has no Migrated gate or its gate is open. (The new pod's
// own gate is still closed; creation times, with their one-second
// resolution, cannot tell two pods of a quick rollout apart.) When there
// are several, the oldest. Nil when pod has no controller or no such pod
// runs.
func Predecessor(pod *corev1.Pod, pods []corev1.Pod) *corev1.Pod {
	owner := metav1.GetControllerOf(pod)
	if owner == nil {
		return nil
	}
	var best *corev1.Pod
	for i := range pods {
		p := &pods[i]
		o := metav1.GetControllerOf(p)
		if p.UID == pod.UID || o == nil || o.UID != owner.UID || p.DeletionTimestamp != nil ||
			p.Spec.NodeName != pod.Spec.NodeName || p.Status.Phase != corev1.PodRunning || Waiting(p) {
			continue
		}
		if best == nil || p.CreationTimestamp.Before(&best.CreationTimestamp) {
			best = p
		}
	}
	return best
}

// AppContainer returns the index in pod.Spec.Containers of the
// application's container: the one v1alpha1.ContainerAnnotation names, or
// the only one. Otherwise the error says what to set on the pod template.
func AppContainer(pod *corev1.Pod) (int, error) {
	cs := pod.Spec.Containers
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = fmt.Sprintf("%q", c.Name)
	}
	list := strings.Join(names, ", ")
	want, annotated := pod.Annotations[v1alpha1.ContainerAnnotation]
	switch {
	case annotated:
		if i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == want }); i >= 0 {
			return i, nil
		}
		return -1, fmt.Errorf("annotation %s=%q names no container of the pod (%s): set it to the application's container on the pod template",
			v1alpha1.ContainerAnnotation, want, list)
	case len(cs) == 1:
		return 0, nil
	default:
		return -1, fmt.Errorf("the pod has %d containers (%s): set the annotation %s to the application's container on the pod template",
			len(cs), list, v1alpha1.ContainerAnnotation)
	}
}

// NeedsGate reports whether the pod gets the readiness gate
// v1alpha1.ConditionMigrated: only a hostNetwork pod whose controller is
// a DaemonSet, the one kind of pod whose condition the rollout controller
// sets. A gate nobody sets would keep the pod unready for ever.
func NeedsGate(pod *corev1.Pod) bool {
	owner := metav1.GetControllerOfNoCopy(pod)
	return pod.Spec.HostNetwork && owner != nil && owner.Kind == "DaemonSet" && strings.HasPrefix(owner.APIVersion, "apps/")
}
