package inject

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// Path is where the webhook server serves the pod webhook; the
// MutatingWebhookConfiguration's entries call it.
const Path = "/inject-pod"

// Name is the webhook's name in Events (reportingController) and logs.
const Name = "handoff-webhook"

// The manager records Events on pods' owners (any group: the recorder's
// Events are events.k8s.io), already granted to the Migration controller.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Webhook is the admission handler of pod CREATE requests.
type Webhook struct {
	// Config is what it injects.
	Config Config
	// Recorder records NotInjectable Events on the pod's controller
	// owner; nil records none.
	Recorder events.EventRecorder
}

// Register serves w at Path on srv.
func (w *Webhook) Register(srv webhook.Server) {
	srv.Register(Path, &webhook.Admission{Handler: w})
}

// Handle injects into a created pod (see Inject) and answers with the
// JSON patch. It admits every pod, changed or not: a pod it cannot inject
// gets a warning, and its controller owner an Event, saying what to set.
func (w *Webhook) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || req.Kind.Group != "" || req.Kind.Kind != "Pod" {
		return admission.Allowed("handoff injects only into created pods")
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod %s/%s: %w", req.Namespace, req.Name, err))
	}
	// The namespace's webhook entry excludes these, but the label on the
	// pod is the user's last word wherever it comes from.
	if pod.Labels[v1alpha1.EnabledLabel] == "false" {
		return admission.Allowed("pod opted out with " + v1alpha1.EnabledLabel + "=false")
	}
	res, err := Inject(pod, w.Config)
	var ni *NotInjectableError
	switch {
	case errors.As(err, &ni):
		w.notInjectable(ctx, req, pod, ni)
		return admission.Allowed("").WithWarnings(fmt.Sprintf("handoff did not inject the pod: %s", ni))
	case err != nil:
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("inject pod %s/%s: %w", req.Namespace, podName(pod), err))
	case len(res.Added) == 0:
		return admission.Allowed("already injected")
	}
	out, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode pod %s/%s: %w", req.Namespace, podName(pod), err))
	}
	logf.FromContext(ctx).V(1).Info("injected", "namespace", req.Namespace, "pod", podName(pod), "container", res.Container, "added", res.Added)
	return admission.PatchResponseFromRaw(req.Object.Raw, out)
}

// notInjectable logs why, and records a Warning Event on the pod's
// controller owner (the pod does not exist yet), unless the request is a
// dry run: the configuration promises sideEffects NoneOnDryRun.
func (w *Webhook) notInjectable(ctx context.Context, req admission.Request, pod *corev1.Pod, why error) {
	owner := metav1.GetControllerOfNoCopy(pod)
	logf.FromContext(ctx).Info("not injectable", "namespace", req.Namespace, "pod", podName(pod), "owner", owner, "reason", why.Error())
	if w.Recorder == nil || owner == nil || (req.DryRun != nil && *req.DryRun) {
		return
	}
	ref := &corev1.ObjectReference{APIVersion: owner.APIVersion, Kind: owner.Kind, Name: owner.Name, UID: owner.UID, Namespace: req.Namespace}
	w.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, v1alpha1.ReasonNotInjectable, "Inject",
		"handoff did not inject pod %s: %s", podName(pod), why)
}

// podName is the pod's name, or its generateName prefix with "*".
func podName(pod *corev1.Pod) string {
	if pod.Name == "" && pod.GenerateName != "" {
		return pod.GenerateName + "*"
	}
	return pod.Name
}
