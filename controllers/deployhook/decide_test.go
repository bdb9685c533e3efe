package deployhook

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// deployment is an opted-in Deployment (mode; none when "") running image.
func deployment(mode, image string) *appsv1.Deployment {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Annotations: map[string]string{}}}
	if mode != "" {
		d.Annotations[v1alpha1.UpdateAnnotation] = mode
	}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "app", Image: image}}
	return d
}

func withImage(d *appsv1.Deployment, image string) *appsv1.Deployment {
	d = d.DeepCopy()
	d.Spec.Template.Spec.Containers[0].Image = image
	return d
}

func inRollout(d *appsv1.Deployment, ro workload.InPlaceRollout) *appsv1.Deployment {
	d = d.DeepCopy()
	d.Spec.Paused = true
	d.Annotations[v1alpha1.InPlaceRolloutAnnotation] = ro.String()
	return d
}

func TestDecide(t *testing.T) {
	ifPossible := string(v1alpha1.InPlaceIfPossible)
	base := deployment(ifPossible, "app:1")
	r1 := workload.InPlaceRollout{ID: "r1", Container: "app", From: "app:1", To: "app:2"}
	running := inRollout(withImage(base, "app:2"), r1)
	envChange := withImage(running, "app:2")
	envChange.Spec.Template.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MODE", Value: "b"}}
	resumed := running.DeepCopy()
	resumed.Spec.Paused = false
	dropped := withImage(running, "app:3")
	delete(dropped.Annotations, v1alpha1.InPlaceRolloutAnnotation)
	userPaused := base.DeepCopy()
	userPaused.Spec.Paused = true
	finished := running.DeepCopy()
	finished.Spec.Paused = false
	delete(finished.Annotations, v1alpha1.InPlaceRolloutAnnotation)
	two := deployment(ifPossible, "app:1")
	two.Spec.Template.Spec.Containers = append(two.Spec.Template.Spec.Containers, corev1.Container{Name: "side", Image: "side:1"})
	onlyEnv := withImage(deployment(string(v1alpha1.InPlaceOnly), "app:1"), "app:2")
	onlyEnv.Spec.Template.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MODE", Value: "b"}}

	for _, tc := range []struct {
		name     string
		old, new *appsv1.Deployment
		paused   bool
		rollout  *workload.InPlaceRollout // the annotation after; nil: none
		note     string                   // reason of the Event; "" none
		noteType string
		says     string
	}{
		{"image-only change pauses", base, withImage(base, "app:2"), true, &workload.InPlaceRollout{ID: "req", Container: "app", From: "app:1", To: "app:2"}, v1alpha1.ReasonPausedInPlace, corev1.EventTypeNormal, "from app:1 to app:2"},
		{"not opted in", deployment("", "app:1"), withImage(deployment("", "app:1"), "app:2"), false, nil, "", "", ""},
		{"unknown mode", deployment("Sometimes", "app:1"), withImage(deployment("Sometimes", "app:1"), "app:2"), false, nil, v1alpha1.ReasonUnsupportedWorkload, corev1.EventTypeWarning, `"Sometimes" is neither`},
		{"not image-only", base, func() *appsv1.Deployment {
			d := withImage(base, "app:1")
			d.Spec.Template.Labels = map[string]string{"v": "2"}
			return d
		}(), false, nil, v1alpha1.ReasonNotImageOnly, corev1.EventTypeNormal, "more of the pod template than an image"},
		{"not image-only under InPlaceOnly warns", deployment(string(v1alpha1.InPlaceOnly), "app:1"), onlyEnv, false, nil, v1alpha1.ReasonNotImageOnly, corev1.EventTypeWarning, "the Deployment controller rolls it out"},
		{"user's pause left alone", userPaused, withImage(userPaused, "app:2"), true, nil, "", "", ""},
		{"user pauses and changes at once", base, withImage(userPaused, "app:2"), true, nil, "", "", ""},
		{"two containers, no annotation", two, withImage(two, "app:2"), false, nil, v1alpha1.ReasonNotInPlace, corev1.EventTypeWarning, "set the annotation handoff.dev/container"},
		{"no template change", base, func() *appsv1.Deployment { d := base.DeepCopy(); d.Spec.Replicas = new(int32(5)); return d }(), false, nil, "", "", ""},
		{"new image mid-rollout moves the target", running, withImage(running, "app:3"), true, &workload.InPlaceRollout{ID: "req", Container: "app", From: "app:1", To: "app:3"}, v1alpha1.ReasonPausedInPlace, corev1.EventTypeNormal, "to app:3 instead of app:2"},
		{"image back to the start mid-rollout", running, withImage(running, "app:1"), true, &workload.InPlaceRollout{ID: "req", Container: "app", From: "app:1", To: "app:1"}, v1alpha1.ReasonPausedInPlace, corev1.EventTypeNormal, "to app:1"},
		{"other change mid-rollout hands back", running, envChange, false, nil, v1alpha1.ReasonHandedBack, corev1.EventTypeWarning, "the Deployment is resumed"},
		{"resumed by hand ends it", running, resumed, false, nil, v1alpha1.ReasonHandedBack, corev1.EventTypeNormal, "resumed by hand"},
		{"handoff's own resume", running, finished, false, nil, "", "", ""},
		{"dropped annotation comes back, target moves", running, dropped, true, &workload.InPlaceRollout{ID: "req", Container: "app", From: "app:1", To: "app:3"}, v1alpha1.ReasonPausedInPlace, corev1.EventTypeNormal, "app:3"},
		{"dropped annotation comes back", running, func() *appsv1.Deployment {
			d := running.DeepCopy()
			delete(d.Annotations, v1alpha1.InPlaceRolloutAnnotation)
			return d
		}(), true, &r1, "", "", ""},
		{"annotation removed mid-rollout: the controller's", running, func() *appsv1.Deployment {
			d := withImage(running, "app:3")
			delete(d.Annotations, v1alpha1.UpdateAnnotation)
			return d
		}(), true, &r1, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.new.DeepCopy()
			out, note := Decide(tc.old, tc.new, "req")
			if !equalDeployments(in, tc.new) {
				t.Errorf("Decide changed its input")
			}
			if out.Spec.Paused != tc.paused {
				t.Errorf("paused %v, want %v", out.Spec.Paused, tc.paused)
			}
			got, ok, err := workload.InPlaceRolloutOf(out)
			switch {
			case err != nil:
				t.Errorf("annotation: %v", err)
			case tc.rollout == nil && ok:
				t.Errorf("annotation %+v, want none", got)
			case tc.rollout != nil && (!ok || got != *tc.rollout):
				t.Errorf("annotation %+v (%v), want %+v", got, ok, *tc.rollout)
			}
			switch {
			case tc.note == "" && note != nil:
				t.Errorf("Event %+v, want none", *note)
			case tc.note != "" && note == nil:
				t.Errorf("no Event, want %s", tc.note)
			case tc.note != "" && (note.Reason != tc.note || note.Type != tc.noteType || !strings.Contains(note.Message, tc.says)):
				t.Errorf("Event %+v, want %s %s saying %q", *note, tc.noteType, tc.note, tc.says)
			}
			// Nothing else changes.
			rest := out.DeepCopy()
			rest.Spec.Paused = tc.new.Spec.Paused
			rest.Annotations[v1alpha1.InPlaceRolloutAnnotation] = tc.new.Annotations[v1alpha1.InPlaceRolloutAnnotation]
			if _, had := tc.new.Annotations[v1alpha1.InPlaceRolloutAnnotation]; !had {
				delete(rest.Annotations, v1alpha1.InPlaceRolloutAnnotation)
			}
			if !equalDeployments(rest, tc.new) {
				t.Errorf("changed more than spec.paused and %s", v1alpha1.InPlaceRolloutAnnotation)
			}
		})
	}
}

func equalDeployments(a, b *appsv1.Deployment) bool {
	return a.String() == b.String()
}
