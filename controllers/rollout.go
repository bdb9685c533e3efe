package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// inPlaceMigration describes the Migration an in-place rollout creates
// for one pod: its container restarted with image while the node agent
// holds its sockets, owned by the pod, labelled with the workload.
type inPlaceMigration struct {
	name, container, image string
	workload, kind         string // the workload's name and kind
	revision               string // what the pod moves to, for the label
	timeout                time.Duration
}

// createInPlaceMigration creates m for pod p (one that exists already,
// from an earlier reconcile, is fine) and returns it.
func createInPlaceMigration(ctx context.Context, c client.Client, p *corev1.Pod, m inPlaceMigration) (*v1alpha1.Migration, error) {
	mig := &v1alpha1.Migration{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.Namespace, Name: m.name,
			Labels: map[string]string{
				v1alpha1.WorkloadLabel: m.workload, v1alpha1.WorkloadKindLabel: m.kind, v1alpha1.RevisionLabel: m.revision,
			},
		},
		Spec: v1alpha1.MigrationSpec{
			Source:  v1alpha1.Endpoint{Pod: p.Name, Container: m.container},
			Target:  v1alpha1.TargetEndpoint{Endpoint: v1alpha1.Endpoint{Pod: p.Name, Container: m.container}, Image: m.image},
			Timeout: &metav1.Duration{Duration: m.timeout},
		},
	}
	if err := ctrl.SetControllerReference(p, mig, c.Scheme()); err != nil {
		return nil, fmt.Errorf("own migration %s/%s by pod %s: %w", mig.Namespace, mig.Name, p.Name, err)
	}
	if err := c.Create(ctx, mig); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create migration %s/%s: %w", mig.Namespace, mig.Name, err)
	}
	return mig, nil
}

// markApplied marks a rollout's Migration whose outcome the rollout has
// applied to its pod (AppliedAnnotation).
func markApplied(ctx context.Context, c client.Client, mig *v1alpha1.Migration) error {
	if mig.Annotations[v1alpha1.AppliedAnnotation] == "true" {
		return nil
	}
	orig := mig.DeepCopy()
	if mig.Annotations == nil {
		mig.Annotations = map[string]string{}
	}
	mig.Annotations[v1alpha1.AppliedAnnotation] = "true"
	if err := c.Patch(ctx, mig, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("mark migration %s/%s applied: %w", mig.Namespace, mig.Name, err)
	}
	return nil
}

// workloadOf maps a rollout's Migration to its workload of kind.
func workloadOf(kind string) handler.MapFunc {
	return func(_ context.Context, o client.Object) []reconcile.Request {
		l := o.GetLabels()
		if l[v1alpha1.WorkloadKindLabel] != kind || l[v1alpha1.WorkloadLabel] == "" {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: l[v1alpha1.WorkloadLabel]}}}
	}
}

// annotated selects workloads with the UpdateAnnotation.
var annotated = predicate.NewPredicateFuncs(func(o client.Object) bool {
	_, ok := o.GetAnnotations()[v1alpha1.UpdateAnnotation]
	return ok
})

// migrationTimeout is the timeout of a rollout's Migration: the first
// TimeoutAnnotation found in annotations (the pod's, then the workload's),
// else set, else def. A value that is not a duration from 1s to 1h is
// ignored, and problem says so.
func migrationTimeout(set, def time.Duration, annotations ...map[string]string) (d time.Duration, problem string) {
	d = def
	if set > 0 {
		d = set
	}
	for _, a := range annotations {
		v, ok := a[v1alpha1.TimeoutAnnotation]
		if !ok {
			continue
		}
		t, err := time.ParseDuration(v)
		if err != nil || t < time.Second || t > time.Hour {
			return d, fmt.Sprintf("%s=%q is not a duration from 1s to 1h; using %v", v1alpha1.TimeoutAnnotation, v, d)
		}
		return t, ""
	}
	return d, ""
}

// record records an Event about o, related to a pod when there is one: a
// workload's Events about different pods then stay apart (the recorder
// merges Events with the same object, reason and related object into one
// series, keeping only the first note).
func record(rec events.EventRecorder, o client.Object, related *corev1.Pod, kind, reason, msg string) {
	if rec == nil {
		return
	}
	var rel runtime.Object
	if related != nil {
		rel = related
	}
	rec.Eventf(o, rel, kind, reason, "Rollout", "%s", msg)
}

// podReady reports whether the pod's Ready condition is True.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
