// Package migstatus writes a Migration's status with server-side apply, so
// the controller and the node agent each own exactly their fields (and
// their conditions, which SSA merges by type) and never overwrite each
// other's.
package migstatus

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// Owner describes one writer of the status: the JSON names of the status
// fields it owns and the condition types it owns.
type Owner struct {
	// FieldManager is the name the API server records for these fields.
	FieldManager string
	// Fields are the status fields' JSON names, other than conditions.
	Fields []string
	// Conditions are the condition types this writer owns.
	Conditions []string
}

// Controller owns the summary, the scheduling and the timestamps.
var Controller = Owner{
	FieldManager: v1alpha1.ControllerFieldManager,
	Fields:       []string{"phase", "nodeName", "message", "observedGeneration", "startTime", "completionTime"},
	Conditions: []string{v1alpha1.ConditionReady, v1alpha1.ConditionValidated, v1alpha1.ConditionScheduled,
		v1alpha1.ConditionSourceHandled},
}

// Agent owns the account of the transfer itself.
var Agent = Owner{
	FieldManager: v1alpha1.AgentFieldManager,
	Fields:       []string{"moved", "pause", "sourceContainerID", "targetContainerID"},
	Conditions:   []string{v1alpha1.ConditionTransferred},
}

// Owned returns the part of st that o owns, as the JSON object o applies.
// Fields o owns that are unset are left out, which with server-side apply
// removes them: each writer always sends the whole of its part.
func (o Owner) Owned(st *v1alpha1.MigrationStatus) (map[string]any, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encode status: %w", err)
	}
	var all map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	out := map[string]any{}
	for _, f := range o.Fields {
		if v, ok := all[f]; ok {
			out[f] = v
		}
	}
	var conds []metav1.Condition
	for _, c := range st.Conditions {
		if slices.Contains(o.Conditions, c.Type) {
			conds = append(conds, c)
		}
	}
	if len(conds) > 0 {
		b, err := json.Marshal(conds)
		if err != nil {
			return nil, fmt.Errorf("encode conditions: %w", err)
		}
		var v []any
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("decode conditions: %w", err)
		}
		out["conditions"] = v
	}
	return out, nil
}

// Apply writes o's part of mig.Status with server-side apply, forcing
// ownership of those fields only.
func (o Owner) Apply(ctx context.Context, c client.Client, mig *v1alpha1.Migration) error {
	return o.apply(ctx, c, mig, "")
}

// ApplyIfUnchanged is Apply with mig's resourceVersion as a precondition:
// it fails with a Conflict if the object changed since it was read.
func (o Owner) ApplyIfUnchanged(ctx context.Context, c client.Client, mig *v1alpha1.Migration) error {
	return o.apply(ctx, c, mig, mig.ResourceVersion)
}

func (o Owner) apply(ctx context.Context, c client.Client, mig *v1alpha1.Migration, rv string) error {
	st, err := o.Owned(&mig.Status)
	if err != nil {
		return fmt.Errorf("migration %s/%s: %w", mig.Namespace, mig.Name, err)
	}
	md := map[string]any{"name": mig.Name, "namespace": mig.Namespace}
	if rv != "" {
		md["resourceVersion"] = rv
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "Migration",
		"metadata":   md,
		"status":     st,
	}}
	if err := c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(o.FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply status of migration %s/%s as %s: %w", mig.Namespace, mig.Name, o.FieldManager, err)
	}
	return nil
}
