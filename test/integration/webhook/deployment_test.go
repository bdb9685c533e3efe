package webhook

import (
	"context"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// newDeployment creates a Deployment named name with the given
// handoff.dev/update value ("" for none) and containers (the first one's
// image "app:1"); edit changes it first.
func newDeployment(t *testing.T, ns, name, mode string, edit func(*appsv1.Deployment)) *appsv1.Deployment {
	t.Helper()
	sel := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}},
		},
	}
	if mode != "" {
		d.Annotations[v1alpha1.UpdateAnnotation] = mode
	}
	if edit != nil {
		edit(d)
	}
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatalf("create deployment %s: %v", name, err)
	}
	return d
}

// change updates the Deployment as kubectl set image or edit would, and
// returns it as the API server stored it.
func change(t *testing.T, d *appsv1.Deployment, edit func(*appsv1.Deployment)) *appsv1.Deployment {
	t.Helper()
	ctx := context.Background()
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
		t.Fatal(err)
	}
	edit(d)
	if err := k8s.Update(ctx, d); err != nil {
		t.Fatalf("update deployment %s: %v", d.Name, err)
	}
	return d
}

func setImage(image string) func(*appsv1.Deployment) {
	return func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = image }
}

// deploymentEvent waits for an Event on the Deployment with reason and
// type whose note says every one of says.
func deploymentEvent(t *testing.T, d *appsv1.Deployment, kind, reason string, says ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s %s Event on deployment %s saying %q", kind, reason, d.Name, says), func() error {
		var list eventsv1.EventList
		if err := k8s.List(context.Background(), &list, client.InNamespace(d.Namespace)); err != nil {
			return err
		}
	next:
		for _, e := range list.Items {
			if e.Regarding.Kind != "Deployment" || e.Regarding.Name != d.Name || e.Reason != reason || e.Type != kind {
				continue
			}
			for _, s := range says {
				if !strings.Contains(e.Note, s) {
					continue next
				}
			}
			return nil
		}
		return fmt.Errorf("%d events, none matches", len(list.Items))
	})
}

// untouched checks that the update was stored as sent: not paused, no
// rollout annotation.
func untouched(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	if _, ok := d.Annotations[v1alpha1.InPlaceRolloutAnnotation]; ok || d.Spec.Paused {
		t.Errorf("deployment %s: paused %v, annotation %q; want neither", d.Name, d.Spec.Paused, d.Annotations[v1alpha1.InPlaceRolloutAnnotation])
	}
}

// TestDeploymentWebhook: the API server, calling the webhook over TLS, has
// an image-only change of an opted-in Deployment paused with the rollout
// recorded, a further image moves the target, any other change hands the
// Deployment back resumed, and what handoff does not take is stored as
// sent, with an Event that says why.
func TestDeploymentWebhook(t *testing.T) {
	needAPIServer(t)
	m := startManager(t, systemNS)
	m.waitServing(t)
	ns := namespace(t, nil)
	ifPossible := string(v1alpha1.InPlaceIfPossible)

	t.Run("image-only change pauses, moves the target, other change resumes", func(t *testing.T) {
		d := newDeployment(t, ns, "web", ifPossible, nil)
		d = change(t, d, setImage("app:2"))
		ro, ok, err := workload.InPlaceRolloutOf(d)
		if !d.Spec.Paused || !ok || err != nil || ro.Container != "app" || ro.From != "app:1" || ro.To != "app:2" || ro.ID == "" {
			t.Fatalf("after set image: paused %v, rollout %+v (%v, %v); want paused, app from app:1 to app:2", d.Spec.Paused, ro, ok, err)
		}
		if d.Spec.Template.Spec.Containers[0].Image != "app:2" {
			t.Fatalf("template image %s, want the update's app:2", d.Spec.Template.Spec.Containers[0].Image)
		}
		deploymentEvent(t, d, corev1.EventTypeNormal, v1alpha1.ReasonPausedInPlace, "from app:1 to app:2")

		// An update that changes something else keeps the rollout.
		d = change(t, d, func(d *appsv1.Deployment) { d.Spec.Replicas = ptr[int32](3) })
		if again, _, _ := workload.InPlaceRolloutOf(d); !d.Spec.Paused || again != ro {
			t.Fatalf("after scaling: paused %v, rollout %+v; want %+v", d.Spec.Paused, again, ro)
		}

		d = change(t, d, setImage("app:3"))
		next, ok, _ := workload.InPlaceRolloutOf(d)
		if !d.Spec.Paused || !ok || next.From != "app:1" || next.To != "app:3" || next.ID == ro.ID {
			t.Fatalf("after a second image: paused %v, rollout %+v; want from app:1 to app:3 under a new id", d.Spec.Paused, next)
		}

		d = change(t, d, func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MODE", Value: "b"}}
		})
		untouched(t, d)
		deploymentEvent(t, d, corev1.EventTypeWarning, v1alpha1.ReasonHandedBack, "more of the pod template than an image", "resumed")
	})

	t.Run("resumed by hand", func(t *testing.T) {
		d := change(t, newDeployment(t, ns, "resumed", ifPossible, nil), setImage("app:2"))
		if !d.Spec.Paused {
			t.Fatal("not paused")
		}
		d = change(t, d, func(d *appsv1.Deployment) { d.Spec.Paused = false }) // kubectl rollout resume
		untouched(t, d)
		deploymentEvent(t, d, corev1.EventTypeNormal, v1alpha1.ReasonHandedBack, "resumed by hand")
	})

	t.Run("not image-only", func(t *testing.T) {
		d := change(t, newDeployment(t, ns, "env", ifPossible, nil), func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Image = "app:2"
			d.Spec.Template.Spec.Containers[0].Args = []string{"--fast"}
		})
		untouched(t, d)
		deploymentEvent(t, d, corev1.EventTypeNormal, v1alpha1.ReasonNotImageOnly, "more of the pod template than an image", "the Deployment controller rolls it out")
	})

	t.Run("paused by its user", func(t *testing.T) {
		d := newDeployment(t, ns, "users", ifPossible, func(d *appsv1.Deployment) { d.Spec.Paused = true })
		d = change(t, d, setImage("app:2"))
		if _, ok := d.Annotations[v1alpha1.InPlaceRolloutAnnotation]; ok || !d.Spec.Paused {
			t.Fatalf("paused %v, annotation %q; want the user's pause alone", d.Spec.Paused, d.Annotations[v1alpha1.InPlaceRolloutAnnotation])
		}
	})

	t.Run("not opted in", func(t *testing.T) {
		untouched(t, change(t, newDeployment(t, ns, "plain", "", nil), setImage("app:2")))
	})

	t.Run("bad input", func(t *testing.T) {
		d := change(t, newDeployment(t, ns, "sometimes", "Sometimes", nil), setImage("app:2"))
		untouched(t, d)
		deploymentEvent(t, d, corev1.EventTypeWarning, v1alpha1.ReasonUnsupportedWorkload, `handoff.dev/update="Sometimes" is neither InPlaceIfPossible nor InPlaceOnly`)

		d = newDeployment(t, ns, "no-such-container", ifPossible, func(d *appsv1.Deployment) {
			d.Spec.Template.Annotations = map[string]string{v1alpha1.ContainerAnnotation: "web"}
		})
		d = change(t, d, setImage("app:2"))
		untouched(t, d)
		deploymentEvent(t, d, corev1.EventTypeWarning, v1alpha1.ReasonNotInPlace, `handoff.dev/container="web" names no container`)
		if d.Spec.Template.Spec.Containers[0].Image != "app:2" {
			t.Errorf("image %s, want the update's app:2", d.Spec.Template.Spec.Containers[0].Image)
		}
	})

	t.Run("dry run", func(t *testing.T) {
		d := newDeployment(t, ns, "dry", ifPossible, nil)
		setImage("app:2")(d)
		if err := k8s.Update(context.Background(), d, client.DryRunAll); err != nil {
			t.Fatal(err)
		}
		if !d.Spec.Paused {
			t.Errorf("dry run answered unpaused: the webhook was not called")
		}
		stored := &appsv1.Deployment{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), stored); err != nil {
			t.Fatal(err)
		}
		untouched(t, stored)
	})

	t.Run("webhook down: rolled out as without handoff", func(t *testing.T) {
		d := newDeployment(t, ns, "unserved", ifPossible, nil)
		m.stop()
		d = change(t, d, setImage("app:2"))
		untouched(t, d)
	})
}
