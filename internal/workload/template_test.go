package workload

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

func tpl(images ...string) *corev1.PodTemplateSpec {
	t := &corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}}}
	for i, img := range images {
		t.Spec.Containers = append(t.Spec.Containers, corev1.Container{Name: []string{"app", "sidecar"}[i], Image: img})
	}
	return t
}

func TestImageOnly(t *testing.T) {
	env := tpl("app:2")
	env.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MODE", Value: "b"}}
	hashed := tpl("app:2")
	hashed.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = "abc123"
	for _, tc := range []struct {
		name     string
		from, to *corev1.PodTemplateSpec
		image    string // "" for an error containing says
		says     string
	}{
		{"image", tpl("app:1"), tpl("app:2"), "app:2", ""},
		{"image, ReplicaSet's hash label ignored", tpl("app:1"), hashed, "app:2", ""},
		{"image and env", tpl("app:1"), env, "", "more of the pod template than an image"},
		{"sidecar's image", tpl("app:1", "side:1"), tpl("app:1", "side:2"), "", "container sidecar, which is not the application's (app)"},
		{"both images", tpl("app:1", "side:1"), tpl("app:2", "side:2"), "", "container sidecar"},
		{"a container more", tpl("app:1"), tpl("app:2", "side:1"), "", "changes its containers"},
		{"nothing", tpl("app:1"), tpl("app:1"), "", "changes nothing"},
	} {
		image, err := ImageOnly(tc.from, tc.to, "app")
		switch {
		case tc.image != "" && (err != nil || image != tc.image):
			t.Errorf("%s: image %q, err %v; want %q", tc.name, image, err, tc.image)
		case tc.image == "" && (err == nil || !strings.Contains(err.Error(), tc.says)):
			t.Errorf("%s: image %q, err %v; want an error saying %q", tc.name, image, err, tc.says)
		}
	}
}

func TestInPlaceRolloutOf(t *testing.T) {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}}
	if _, ok, err := InPlaceRolloutOf(d); ok || err != nil {
		t.Fatalf("no annotation: ok %v err %v", ok, err)
	}
	want := InPlaceRollout{ID: "a1", Container: "app", From: "app:1", To: "app:2"}
	d.Annotations = map[string]string{v1alpha1.InPlaceRolloutAnnotation: want.String()}
	if got, ok, err := InPlaceRolloutOf(d); !ok || err != nil || got != want {
		t.Fatalf("round trip: %+v %v %v", got, ok, err)
	}
	for _, bad := range []string{"yes", `{"id":"a1","container":"app","from":"app:1"}`} {
		d.Annotations[v1alpha1.InPlaceRolloutAnnotation] = bad
		if _, ok, err := InPlaceRolloutOf(d); ok || err == nil || !strings.Contains(err.Error(), "deployment ns/web") {
			t.Errorf("%q: ok %v err %v; want an error naming the deployment", bad, ok, err)
		}
	}
}

func TestTemplateAppContainer(t *testing.T) {
	two := tpl("app:1", "side:1")
	if _, err := TemplateAppContainer(two); err == nil {
		t.Errorf("two containers, no annotation: no error")
	}
	two.Annotations = map[string]string{v1alpha1.ContainerAnnotation: "sidecar"}
	if c, err := TemplateAppContainer(two); c != "sidecar" || err != nil {
		t.Errorf("annotated: %q %v", c, err)
	}
}
