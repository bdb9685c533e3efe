package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

func cond(typ string, s metav1.ConditionStatus, reason string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: typ + " " + reason}
}

func TestSummarize(t *testing.T) {
	const (
		T = metav1.ConditionTrue
		F = metav1.ConditionFalse
		U = metav1.ConditionUnknown
	)
	valid := cond(v1alpha1.ConditionValidated, T, v1alpha1.ReasonValid)
	sched := cond(v1alpha1.ConditionScheduled, T, v1alpha1.ReasonNodeAssigned)
	cases := []struct {
		name   string
		phase  v1alpha1.Phase
		conds  []metav1.Condition
		want   v1alpha1.Phase
		status metav1.ConditionStatus
		reason string
	}{
		{"nothing yet", "", nil, v1alpha1.PhasePending, U, v1alpha1.ReasonPending},
		{"pod missing fails at once", "", []metav1.Condition{cond(v1alpha1.ConditionValidated, F, v1alpha1.ReasonSourcePodNotFound)}, v1alpha1.PhaseFailed, F, v1alpha1.ReasonSourcePodNotFound},
		{"netns fails at once", "", []metav1.Condition{cond(v1alpha1.ConditionValidated, F, v1alpha1.ReasonNetworkNamespaceNotShared)}, v1alpha1.PhaseFailed, F, v1alpha1.ReasonNetworkNamespaceNotShared},
		{"pod not running waits", "", []metav1.Condition{cond(v1alpha1.ConditionValidated, F, v1alpha1.ReasonPodNotRunning)}, v1alpha1.PhasePending, U, v1alpha1.ReasonPodNotRunning},
		{"container not running waits", "", []metav1.Condition{cond(v1alpha1.ConditionValidated, F, v1alpha1.ReasonContainerNotRunning)}, v1alpha1.PhasePending, U, v1alpha1.ReasonContainerNotRunning},
		{"scheduled", "", []metav1.Condition{valid, sched}, v1alpha1.PhaseScheduled, U, v1alpha1.ReasonNodeAssigned},
		{"agent waits for processes", "", []metav1.Condition{valid, sched, cond(v1alpha1.ConditionTransferred, U, v1alpha1.ReasonWaitingForProcesses)}, v1alpha1.PhaseScheduled, U, v1alpha1.ReasonNodeAssigned},
		{"preparing", "", []metav1.Condition{valid, sched, cond(v1alpha1.ConditionTransferred, U, v1alpha1.ReasonPreparing)}, v1alpha1.PhasePreparing, U, v1alpha1.ReasonPreparing},
		{"transferring", "", []metav1.Condition{valid, sched, cond(v1alpha1.ConditionTransferred, U, v1alpha1.ReasonTransferring)}, v1alpha1.PhaseTransferring, U, v1alpha1.ReasonTransferring},
		{"completed", "", []metav1.Condition{valid, sched, cond(v1alpha1.ConditionTransferred, T, v1alpha1.ReasonTransferred)}, v1alpha1.PhaseCompleted, T, v1alpha1.ReasonTransferred},
		{"target lost", "", []metav1.Condition{valid, sched, cond(v1alpha1.ConditionTransferred, F, v1alpha1.ReasonTargetLost)}, v1alpha1.PhaseFailed, F, v1alpha1.ReasonTargetLost},
		{"failed stays failed after a late success", v1alpha1.PhaseFailed,
			[]metav1.Condition{valid, sched, cond(v1alpha1.ConditionReady, F, v1alpha1.ReasonDeadlineExceeded), cond(v1alpha1.ConditionTransferred, T, v1alpha1.ReasonTransferred)},
			v1alpha1.PhaseFailed, F, v1alpha1.ReasonDeadlineExceeded},
		{"completed stays completed", v1alpha1.PhaseCompleted,
			[]metav1.Condition{valid, sched, cond(v1alpha1.ConditionReady, T, v1alpha1.ReasonTransferred), cond(v1alpha1.ConditionTransferred, F, v1alpha1.ReasonTargetLost)},
			v1alpha1.PhaseCompleted, T, v1alpha1.ReasonTransferred},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := &v1alpha1.MigrationStatus{Phase: tc.phase, Conditions: tc.conds}
			got := summarize(st)
			if got.Phase != tc.want || got.Status != tc.status || got.Reason != tc.reason {
				t.Fatalf("summarize = %s/%s/%s, want %s/%s/%s", got.Phase, got.Status, got.Reason, tc.want, tc.status, tc.reason)
			}
			if got.Message == "" {
				t.Fatalf("no message")
			}
		})
	}
}

func TestCheckPod(t *testing.T) {
	now := metav1.Now()
	running := corev1.ContainerStatus{Name: "app", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	waiting := corev1.ContainerStatus{Name: "app", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
	pod := func(edit func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"},
			Spec:   corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "app"}, {Name: "side"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running}}}
		if edit != nil {
			edit(p)
		}
		return p
	}
	cases := []struct {
		name      string
		pod       *corev1.Pod
		container string
		reason    string
	}{
		{"ok", pod(nil), "app", ""},
		{"terminating", pod(func(p *corev1.Pod) { p.DeletionTimestamp = &now }), "app", v1alpha1.ReasonPodTerminating},
		{"no such container", pod(nil), "db", v1alpha1.ReasonContainerNotFound},
		{"unscheduled", pod(func(p *corev1.Pod) { p.Spec.NodeName = "" }), "app", v1alpha1.ReasonNotScheduled},
		{"pending", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), "app", v1alpha1.ReasonPodNotRunning},
		{"container waiting", pod(func(p *corev1.Pod) { p.Status.ContainerStatuses = []corev1.ContainerStatus{waiting} }), "app", v1alpha1.ReasonContainerNotRunning},
		{"container without status", pod(nil), "side", v1alpha1.ReasonContainerNotRunning},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reason, msg := checkPod("source", tc.pod, tc.container)
			if reason != tc.reason {
				t.Fatalf("reason %q (%s), want %q", reason, msg, tc.reason)
			}
			if reason != "" && msg == "" {
				t.Fatalf("no message for %s", reason)
			}
		})
	}
}
