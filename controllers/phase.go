package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// summary is what the controller derives from the conditions.
type summary struct {
	Phase   v1alpha1.Phase
	Status  metav1.ConditionStatus // of Ready
	Reason  string
	Message string
}

// summarize computes the phase and the Ready condition from the other
// conditions. A final phase never changes again: once the controller said
// Failed (say, at the deadline), a late report from the agent cannot turn
// it into Completed, and the reverse.
func summarize(st *v1alpha1.MigrationStatus) summary {
	if st.Phase.Final() {
		if r := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady); r != nil {
			return summary{Phase: st.Phase, Status: r.Status, Reason: r.Reason, Message: r.Message}
		}
	}
	val := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionValidated)
	sch := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionScheduled)
	xfer := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionTransferred)
	switch {
	case xfer != nil && xfer.Status == metav1.ConditionTrue:
		return summary{v1alpha1.PhaseCompleted, metav1.ConditionTrue, xfer.Reason, xfer.Message}
	case xfer != nil && xfer.Status == metav1.ConditionFalse:
		return summary{v1alpha1.PhaseFailed, metav1.ConditionFalse, xfer.Reason, xfer.Message}
	case xfer != nil && xfer.Reason == v1alpha1.ReasonTransferring:
		return summary{v1alpha1.PhaseTransferring, metav1.ConditionUnknown, xfer.Reason, xfer.Message}
	case xfer != nil && xfer.Reason == v1alpha1.ReasonPreparing:
		return summary{v1alpha1.PhasePreparing, metav1.ConditionUnknown, xfer.Reason, xfer.Message}
	case sch != nil && sch.Status == metav1.ConditionTrue:
		msg := sch.Message
		if xfer != nil {
			msg = xfer.Message
		}
		return summary{v1alpha1.PhaseScheduled, metav1.ConditionUnknown, v1alpha1.ReasonNodeAssigned, msg}
	case val != nil && val.Status == metav1.ConditionFalse:
		if permanent(val.Reason) {
			return summary{v1alpha1.PhaseFailed, metav1.ConditionFalse, val.Reason, val.Message}
		}
		return summary{v1alpha1.PhasePending, metav1.ConditionUnknown, val.Reason, val.Message}
	}
	return summary{v1alpha1.PhasePending, metav1.ConditionUnknown, v1alpha1.ReasonPending, "waiting for the controller to validate the pods"}
}

// permanent reports whether a validation failure cannot go away by
// waiting: those fail at once, the others when the deadline passes.
func permanent(reason string) bool {
	switch reason {
	case v1alpha1.ReasonPodNotRunning, v1alpha1.ReasonContainerNotRunning, v1alpha1.ReasonNotScheduled:
		return false
	}
	return true
}
