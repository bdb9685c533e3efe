package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// DaemonSetChecker warns, with an Event on the DaemonSet, when an opted-in
// DaemonSet is written so that its rollouts cannot keep connections, and
// says what to change. It changes nothing: the rollout then proceeds as
// Kubernetes would without handoff.
type DaemonSetChecker struct {
	Client client.Client
	// Recorder records the Events; nil records none.
	Recorder events.EventRecorder

	mu     sync.Mutex
	warned map[types.UID]int64 // the generation last warned about
}

// SetupWithManager registers the checker for DaemonSets whose pod
// template carries the EnabledLabel.
func (r *DaemonSetChecker) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(Name)
	}
	enabled := predicate.NewPredicateFuncs(func(o client.Object) bool {
		ds, ok := o.(*appsv1.DaemonSet)
		return ok && ds.Spec.Template.Labels[v1alpha1.EnabledLabel] == "true"
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("daemonset-check").
		For(&appsv1.DaemonSet{}, builder.WithPredicates(enabled, predicate.GenerationChangedPredicate{})).
		Complete(r)
}

// Reconcile checks one DaemonSet and warns once per generation.
func (r *DaemonSetChecker) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	ds := &appsv1.DaemonSet{}
	if err := r.Client.Get(ctx, req.NamespacedName, ds); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	problems := CheckDaemonSet(ds)
	r.mu.Lock()
	if r.warned == nil {
		r.warned = map[types.UID]int64{}
	}
	seen := r.warned[ds.UID] == ds.Generation
	r.warned[ds.UID] = ds.Generation
	r.mu.Unlock()
	if len(problems) == 0 || seen || r.Recorder == nil {
		return reconcile.Result{}, nil
	}
	r.Recorder.Eventf(ds, nil, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, "Check",
		"DaemonSet %s cannot keep its connections through a rollout: %s", ds.Name, strings.Join(problems, "; "))
	return reconcile.Result{}, nil
}

// CheckDaemonSet lists what keeps an opted-in DaemonSet's surge rollout
// from handing its pods' sockets over, each with what to change. A
// DaemonSet with the UpdateAnnotation is updated in place instead
// (InPlaceDaemonSetReconciler checks that one).
func CheckDaemonSet(ds *appsv1.DaemonSet) []string {
	if _, inPlace := ds.Annotations[v1alpha1.UpdateAnnotation]; inPlace {
		return nil
	}
	var out []string
	spec := &ds.Spec.Template.Spec
	if !spec.HostNetwork {
		out = append(out, fmt.Sprintf("its pods use the pod network, where a new pod has a network namespace of its own and cannot take over the old pod's sockets: set hostNetwork: true, or update the pods in place (updateStrategy OnDelete and the annotation %s: %s)", v1alpha1.UpdateAnnotation, v1alpha1.InPlaceIfPossible))
	}
	if spec.HostNetwork {
		for _, c := range spec.Containers {
			for _, p := range c.Ports {
				out = append(out, fmt.Sprintf("container %s declares port %d, which on the host network is a host port: the scheduler will not place the new pod beside the old one (kubernetes/kubernetes#106417); remove the ports list", c.Name, p.ContainerPort))
			}
		}
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	switch {
	case ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType:
		out = append(out, "updateStrategy is OnDelete: set type RollingUpdate with rollingUpdate.maxSurge: 1 and maxUnavailable: 0")
	case ru == nil || ru.MaxSurge == nil || isZero(ru.MaxSurge):
		out = append(out, "updateStrategy.rollingUpdate.maxSurge is 0, so each old pod is deleted before its replacement starts: set maxSurge: 1 and maxUnavailable: 0")
	case ru.MaxUnavailable != nil && !isZero(ru.MaxUnavailable):
		out = append(out, fmt.Sprintf("updateStrategy.rollingUpdate.maxUnavailable is %s, so old pods may be deleted before a handoff: set it to 0", ru.MaxUnavailable.String()))
	}
	return out
}

func isZero(v *intstr.IntOrString) bool {
	return v.String() == "0" || v.String() == "0%"
}
