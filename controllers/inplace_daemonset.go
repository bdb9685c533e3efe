package controllers

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// templateGenerationLabel is the DaemonSet controller's older way of
// saying which template a pod was made from (the DaemonSet's annotation
// appsv1.DeprecatedTemplateGeneration); it counts a pod as updated when
// this label or its revision hash matches.
const templateGenerationLabel = "pod-template-generation"

// InPlaceDaemonSetReconciler rolls opted-in DaemonSets out in place, node
// by node, as InPlaceReconciler does StatefulSets: with updateStrategy
// OnDelete and the handoff.dev/update annotation, each pod whose change is
// one of its application container's image restarts in place while the
// node agent holds its sockets, and its revision labels then move, so
// that the DaemonSet's updatedNumberScheduled counts it. This is the path
// for DaemonSets on the pod network, where a new pod could not take the
// old one's sockets.
type InPlaceDaemonSetReconciler struct {
	InPlaceReconciler
}

// SetupWithManager registers the reconciler for annotated DaemonSets,
// their pods and the pods' Migrations.
func (r *InPlaceDaemonSetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("inplace-daemonset").
		For(&appsv1.DaemonSet{}, builder.WithPredicates(annotated)).
		Owns(&corev1.Pod{}).
		Watches(&v1alpha1.Migration{}, handler.EnqueueRequestsFromMapFunc(workloadOf("DaemonSet"))).
		Complete(r)
}

// Reconcile moves one DaemonSet's rollout forward: check the spec → find
// the update revision → read the pods → take each pod a step.
func (r *InPlaceDaemonSetReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	ds := &appsv1.DaemonSet{}
	if err := r.Client.Get(ctx, req.NamespacedName, ds); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	ro, problem := checkOptIn(ds, "DaemonSet", ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType, string(ds.Spec.UpdateStrategy.Type))
	if problem != "" {
		r.event(ds, nil, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, problem)
		return reconcile.Result{}, nil
	}
	if ds.Status.ObservedGeneration < ds.Generation {
		return reconcile.Result{}, nil // the DaemonSet controller has not caught up
	}
	names, err := r.revisions(ctx, ds, ro)
	if err != nil || ro.update == "" {
		return reconcile.Result{}, err
	}
	ro.revisionOf = func(p *corev1.Pod) string { return names[p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey]] }
	ro.moveLabels = func(p *corev1.Pod) {
		p.Labels[appsv1.DefaultDaemonSetUniqueLabelKey] = ro.hash
		if g, ok := ds.Annotations[appsv1.DeprecatedTemplateGeneration]; ok {
			p.Labels[templateGenerationLabel] = g
		}
	}
	if err := r.load(ctx, ro); err != nil {
		return reconcile.Result{}, err
	}
	// Node by node, in a stable order.
	slices.SortFunc(ro.pods, func(a, b *corev1.Pod) int {
		return cmp.Or(strings.Compare(a.Spec.NodeName, b.Spec.NodeName), strings.Compare(a.Name, b.Name))
	})
	return r.step(ctx, ro)
}

// revisions reads the DaemonSet's ControllerRevisions: the newest is the
// update revision (its name and hash go into ro); it returns each
// revision's name by its hash.
func (r *InPlaceDaemonSetReconciler) revisions(ctx context.Context, ds *appsv1.DaemonSet, ro *rollout) (map[string]string, error) {
	var list appsv1.ControllerRevisionList
	if err := r.Client.List(ctx, &list, client.InNamespace(ds.Namespace)); err != nil {
		return nil, fmt.Errorf("list controllerrevisions of daemonset %s/%s: %w", ds.Namespace, ds.Name, err)
	}
	names := map[string]string{}
	var newest *appsv1.ControllerRevision
	for i := range list.Items {
		cr := &list.Items[i]
		if !metav1.IsControlledBy(cr, ds) {
			continue
		}
		names[cr.Labels[appsv1.DefaultDaemonSetUniqueLabelKey]] = cr.Name
		if newest == nil || cr.Revision > newest.Revision {
			newest = cr
		}
	}
	if newest != nil {
		ro.update, ro.hash = newest.Name, newest.Labels[appsv1.DefaultDaemonSetUniqueLabelKey]
	}
	return names, nil
}
