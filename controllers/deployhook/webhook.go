package deployhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// Path is where the webhook server serves the Deployment webhook; the
// MutatingWebhookConfiguration's entry deployment.inplace.handoff.dev
// calls it.
const Path = "/inplace-deployment"

// Name is the webhook's name in Events (reportingController) and logs.
const Name = "handoff-webhook"

// Webhook is the admission handler of Deployment UPDATE requests.
type Webhook struct {
	// Recorder records Decide's Events on the Deployment; nil records
	// none.
	Recorder events.EventRecorder
}

// Register serves w at Path on srv.
func (w *Webhook) Register(srv webhook.Server) {
	srv.Register(Path, &webhook.Admission{Handler: w})
}

// Handle applies Decide to an updated Deployment and answers with the
// JSON patch of spec.paused and the in-place-rollout annotation. It
// admits every update.
func (w *Webhook) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Update || req.Kind.Group != "apps" || req.Kind.Kind != "Deployment" {
		return admission.Allowed("handoff looks only at Deployment updates")
	}
	var old, cur appsv1.Deployment
	if err := json.Unmarshal(req.OldObject.Raw, &old); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode the stored deployment %s/%s: %w", req.Namespace, req.Name, err))
	}
	if err := json.Unmarshal(req.Object.Raw, &cur); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode deployment %s/%s: %w", req.Namespace, req.Name, err))
	}
	out, note := Decide(&old, &cur, rolloutID(req))
	if note != nil {
		w.record(ctx, req, out, note)
	}
	if out.Spec.Paused == cur.Spec.Paused && out.Annotations[v1alpha1.InPlaceRolloutAnnotation] == cur.Annotations[v1alpha1.InPlaceRolloutAnnotation] {
		return admission.Allowed("")
	}
	// The two fields set in the request's own JSON, so that the patch
	// holds nothing a typed round trip would add.
	var raw map[string]any
	if err := json.Unmarshal(req.Object.Raw, &raw); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode deployment %s/%s: %w", req.Namespace, req.Name, err))
	}
	spec, _ := raw["spec"].(map[string]any)
	meta, _ := raw["metadata"].(map[string]any)
	if spec == nil || meta == nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("deployment %s/%s has no spec or metadata", req.Namespace, req.Name))
	}
	spec["paused"] = out.Spec.Paused
	annotations, _ := meta["annotations"].(map[string]any)
	if annotations == nil {
		annotations = map[string]any{}
		meta["annotations"] = annotations
	}
	if v, ok := out.Annotations[v1alpha1.InPlaceRolloutAnnotation]; ok {
		annotations[v1alpha1.InPlaceRolloutAnnotation] = v
	} else {
		delete(annotations, v1alpha1.InPlaceRolloutAnnotation)
	}
	patched, err := json.Marshal(raw)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode deployment %s/%s: %w", req.Namespace, req.Name, err))
	}
	logf.FromContext(ctx).V(1).Info("in-place rollout", "namespace", req.Namespace, "deployment", req.Name, "paused", out.Spec.Paused,
		"rollout", out.Annotations[v1alpha1.InPlaceRolloutAnnotation])
	return admission.PatchResponseFromRaw(req.Object.Raw, patched)
}

// rolloutID is a short id unique to the request.
func rolloutID(req admission.Request) string {
	id := strings.ReplaceAll(string(req.UID), "-", "")
	if len(id) > 10 {
		id = id[:10]
	}
	return id
}

// record records the note on the Deployment, unless the request is a dry
// run: the configuration promises sideEffects NoneOnDryRun. (An update
// that fails after admission, on a conflict say, leaves its Event.)
func (w *Webhook) record(ctx context.Context, req admission.Request, d *appsv1.Deployment, n *Note) {
	logf.FromContext(ctx).Info(n.Message, "namespace", req.Namespace, "deployment", req.Name, "reason", n.Reason)
	if w.Recorder == nil || (req.DryRun != nil && *req.DryRun) {
		return
	}
	ref := &corev1.ObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, Namespace: req.Namespace, UID: d.UID}
	w.Recorder.Eventf(ref, nil, n.Type, n.Reason, "Update", "%s", n.Message)
}
