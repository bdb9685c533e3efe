// Package deployhook is the manager's mutating admission webhook for
// Deployment updates: the first half of the in-place path of Deployments
// (the second is controllers.DeploymentReconciler). When an opted-in
// Deployment (annotation handoff.dev/update) that its user has not paused
// gets a change of its application container's image alone, the webhook
// pauses it in the same update, so that the Deployment controller creates
// no new ReplicaSet, and records the rollout in the annotation
// handoff.dev/in-place-rollout; the controller then updates the current
// ReplicaSet's pods in place, moves the new template into that ReplicaSet
// and resumes the Deployment. Any other change is left to the Deployment
// controller, with an Event that says so.
//
// Decide is the pure decision; Webhook serves it. The webhook admits every
// update: it only adds the pause and the annotation, or takes them away.
package deployhook

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// Note is an Event the decision asks to record on the Deployment.
type Note struct {
	// Type is corev1.EventTypeNormal or EventTypeWarning.
	Type string
	// Reason is one of v1alpha1's reasons.
	Reason string
	// Message says what happened and, for a warning, what to do.
	Message string
}

// Decide returns the Deployment as the update should store it, given the
// stored one (old) and the update (upd), which it does not change, and
// an Event to record, if any. id names a rollout it starts or moves to a
// new image (unique per request).
//
// Not in an in-place rollout: an image-only change of an opted-in,
// unpaused Deployment pauses it and starts one; other changes are left
// alone. In one: a further image-only change moves the target (the
// rollout keeps its starting point, which the current ReplicaSet still
// holds); any other change of the template ends it (resumed, the
// Deployment controller rolls out); resuming by hand ends it too; an
// update that drops the annotation but keeps the pause gets it back.
// Removing handoff.dev/update is left to the controller, which resumes
// the Deployment whether or not the webhook is up.
func Decide(old, upd *appsv1.Deployment, id string) (*appsv1.Deployment, *Note) {
	out := upd.DeepCopy()
	changed := !equality.Semantic.DeepEqual(old.Spec.Template, upd.Spec.Template)
	cur, inProgress, err := workload.InPlaceRolloutOf(old)
	if err != nil {
		// The controller hands such a Deployment back.
		return out, nil
	}
	if inProgress {
		return during(old, out, cur, changed, id)
	}
	if !changed {
		return out, nil
	}
	return start(old, out, id)
}

// start decides on a template change of a Deployment handoff has not
// paused.
func start(old, out *appsv1.Deployment, id string) (*appsv1.Deployment, *Note) {
	mode, set := out.Annotations[v1alpha1.UpdateAnnotation]
	switch {
	case !set:
		return out, nil
	case !workload.ValidMode(mode):
		return out, &Note{corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, fmt.Sprintf(
			"%s=%q is neither %s nor %s: the Deployment controller rolls this change out, replacing pods (their clients are disconnected)",
			v1alpha1.UpdateAnnotation, mode, v1alpha1.InPlaceIfPossible, v1alpha1.InPlaceOnly)}
	case old.Spec.Paused || out.Spec.Paused:
		// The user's pause: theirs to resume, and the Deployment
		// controller's to roll out then.
		return out, nil
	}
	container, err := workload.TemplateAppContainer(&out.Spec.Template)
	if err != nil {
		return out, &Note{corev1.EventTypeWarning, v1alpha1.ReasonNotInPlace, fmt.Sprintf(
			"handoff cannot update this change in place: %v; the Deployment controller rolls it out, replacing pods (their clients are disconnected)", err)}
	}
	image, err := workload.ImageOnly(&old.Spec.Template, &out.Spec.Template, container)
	if err != nil {
		kind := corev1.EventTypeNormal
		if mode == string(v1alpha1.InPlaceOnly) {
			kind = corev1.EventTypeWarning
		}
		return out, &Note{kind, v1alpha1.ReasonNotImageOnly, fmt.Sprintf(
			"not updated in place: %v; the Deployment controller rolls it out, replacing pods (their clients are disconnected)", err)}
	}
	ro := workload.InPlaceRollout{ID: id, Container: container, From: imageOf(&old.Spec.Template, container), To: image}
	out.Spec.Paused = true
	out.Annotations[v1alpha1.InPlaceRolloutAnnotation] = ro.String()
	return out, &Note{corev1.EventTypeNormal, v1alpha1.ReasonPausedInPlace, fmt.Sprintf(
		"paused by handoff to update the pods of the current ReplicaSet in place: container %s from %s to %s (rollout %s); handoff resumes the Deployment when they are",
		container, ro.From, image, id)}
}

// during decides on an update of a Deployment in an in-place rollout.
func during(old, out *appsv1.Deployment, cur workload.InPlaceRollout, changed bool, id string) (*appsv1.Deployment, *Note) {
	_, marked := out.Annotations[v1alpha1.InPlaceRolloutAnnotation]
	switch {
	case !out.Spec.Paused && marked:
		delete(out.Annotations, v1alpha1.InPlaceRolloutAnnotation)
		return out, &Note{corev1.EventTypeNormal, v1alpha1.ReasonHandedBack, fmt.Sprintf(
			"resumed by hand during handoff's in-place rollout %s: it ends, and the Deployment controller rolls out the rest (replacing the pods handoff updated too)", cur.ID)}
	case !out.Spec.Paused:
		return out, nil // the rollout ended
	case !marked:
		// Dropped by an update that kept the pause (kubectl replace,
		// server-side apply): handoff's pause still.
		if out.Annotations == nil {
			out.Annotations = map[string]string{}
		}
		out.Annotations[v1alpha1.InPlaceRolloutAnnotation] = cur.String()
	}
	if !changed || !workload.ValidMode(out.Annotations[v1alpha1.UpdateAnnotation]) {
		return out, nil
	}
	image, err := workload.ImageOnly(&old.Spec.Template, &out.Spec.Template, cur.Container)
	if err != nil {
		out.Spec.Paused = false
		delete(out.Annotations, v1alpha1.InPlaceRolloutAnnotation)
		return out, &Note{corev1.EventTypeWarning, v1alpha1.ReasonHandedBack, fmt.Sprintf(
			"changed during handoff's in-place rollout %s, and not updated in place: %v; the rollout ends, the Deployment is resumed and its controller rolls the change out, replacing pods (their clients are disconnected)", cur.ID, err)}
	}
	next := workload.InPlaceRollout{ID: id, Container: cur.Container, From: cur.From, To: image}
	out.Annotations[v1alpha1.InPlaceRolloutAnnotation] = next.String()
	return out, &Note{corev1.EventTypeNormal, v1alpha1.ReasonPausedInPlace, fmt.Sprintf(
		"the in-place rollout now moves container %s to %s instead of %s (rollout %s, was %s)", cur.Container, image, cur.To, id, cur.ID)}
}

// imageOf is container's image in tpl.
func imageOf(tpl *corev1.PodTemplateSpec, container string) string {
	for _, c := range tpl.Spec.Containers {
		if c.Name == container {
			return c.Image
		}
	}
	return ""
}
