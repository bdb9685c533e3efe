package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// podIndex indexes Migrations by the pods they name, so a pod's change
// wakes exactly the Migrations that wait for it.
const podIndex = "spec.pods"

// nodeIndex indexes Pods by node, to find the agent pod of a node.
const nodeIndex = "spec.nodeName"

// SetupWithManager registers the reconciler, its index and its watches.
func (r *MigrationReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.Migration{}, podIndex, func(o client.Object) []string {
		m := o.(*v1alpha1.Migration)
		return []string{m.Spec.Source.Pod, m.Spec.Target.Pod}
	})
	if err != nil {
		return fmt.Errorf("index migrations by pod: %w", err)
	}
	err = mgr.GetFieldIndexer().IndexField(ctx, &corev1.Pod{}, nodeIndex, func(o client.Object) []string {
		return []string{o.(*corev1.Pod).Spec.NodeName}
	})
	if err != nil {
		return fmt.Errorf("index pods by node: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("migration").
		For(&v1alpha1.Migration{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.migrationsOfPod)).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.migrationsOfNode)).
		Complete(r)
}

func (r *MigrationReconciler) migrationsOfPod(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1alpha1.MigrationList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{podIndex: o.GetName()}); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, m := range list.Items {
		if !m.Status.Phase.Final() || m.Status.Phase == v1alpha1.PhaseCompleted {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&m)})
		}
	}
	return reqs
}

// migrationsOfNode wakes the unfinished Migrations scheduled to a node, so
// that a deleted node fails them at once.
func (r *MigrationReconciler) migrationsOfNode(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1alpha1.MigrationList
	if err := r.Client.List(ctx, &list, client.MatchingLabels{v1alpha1.NodeLabel: o.GetName()}); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, m := range list.Items {
		if !m.Status.Phase.Final() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&m)})
		}
	}
	return reqs
}
