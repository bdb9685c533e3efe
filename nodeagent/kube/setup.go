package kube

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// MaxConcurrent is how many Migrations of one node run at once: each
// blocks a worker for its transfer.
const MaxConcurrent = 8

// CacheOptions restricts the manager's cache to what one node's agent may
// see: the Migrations labelled with node, and the Pods scheduled to it.
func CacheOptions(node string) cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&v1alpha1.Migration{}: {Label: labels.SelectorFromSet(labels.Set{v1alpha1.NodeLabel: node})},
		&corev1.Pod{}:         {Field: fields.OneTermEqualSelector("spec.nodeName", node)},
	}}
}

// SetupWithManager registers the reconciler.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Node == "" {
		return fmt.Errorf("node agent reconciler: no node name (set NODE_NAME from the downward API)")
	}
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Reader == nil {
		r.Reader = mgr.GetAPIReader()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	name := r.ControllerName
	if name == "" {
		name = "nodeagent-migration"
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(&v1alpha1.Migration{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: MaxConcurrent}).
		Complete(r)
}
