// Package workload holds the decisions about opted-in workloads that both
// the manager and the node agent make from the same Pod objects, so that
// they cannot disagree: whether a pod waits for the Migrated gate, and
// which older pod on its node is its predecessor.
package workload

import (
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

// AppContainer is the name of the pod's application container: the
// ContainerAnnotation, else the only container. ok is false when the pod
// has several and no annotation, or the annotation names no container.
func AppContainer(pod *corev1.Pod) (name string, ok bool) {
	if n, set := pod.Annotations[v1alpha1.ContainerAnnotation]; set {
		for _, c := range pod.Spec.Containers {
			if c.Name == n {
				return n, true
			}
		}
		return n, false
	}
	if len(pod.Spec.Containers) == 1 {
		return pod.Spec.Containers[0].Name, true
	}
	return "", false
}
