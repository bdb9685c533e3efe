package kube

import (
	"slices"
	"testing"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/wire"
)

// TestFailureReasonTotal fails when wire gains a code that codeReason
// does not map: every failure a result can carry must end the Migration
// with a reason chosen for it, not with a default, and one of the API's
// end reasons.
func TestFailureReasonTotal(t *testing.T) {
	for _, c := range wire.Codes() {
		reason, ok := codeReason(c)
		if !ok || reason == "" {
			t.Errorf("failure code %s (%d) has no reason: give it a case in codeReason", c, uint32(c))
		}
		if !slices.Contains(v1alpha1.EndReasons(), reason) {
			t.Errorf("failure code %s ends a Migration with %q, which is not in v1alpha1.EndReasons (nor the README's table)", c, reason)
		}
		if failureReason(c) != reason {
			t.Errorf("failureReason(%s) = %q, codeReason says %q", c, failureReason(c), reason)
		}
	}
	if got := failureReason(wire.Code(1 << 20)); got != v1alpha1.ReasonTransferFailed {
		t.Errorf("failureReason of an unknown code = %q, want %q", got, v1alpha1.ReasonTransferFailed)
	}
	for c, want := range map[wire.Code]string{
		wire.CodeTargetLost: v1alpha1.ReasonTargetLost,
		wire.CodeSourceLost: v1alpha1.ReasonSourceLost,
		wire.CodeDeadline:   v1alpha1.ReasonDeadlineExceeded,
		wire.CodeNotClaimed: v1alpha1.ReasonProcessNotFound,
		wire.CodeImport:     v1alpha1.ReasonTransferFailed,
	} {
		if got := failureReason(c); got != want {
			t.Errorf("failureReason(%s) = %q, want %q", c, got, want)
		}
	}
}
