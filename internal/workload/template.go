package workload

import (
	"encoding/json"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// TemplateAppContainer is AppContainer of the pods a template makes: the
// application's container's name, or why it cannot be told.
func TemplateAppContainer(tpl *corev1.PodTemplateSpec) (string, error) {
	p := &corev1.Pod{ObjectMeta: tpl.ObjectMeta, Spec: tpl.Spec}
	i, err := AppContainer(p)
	if err != nil {
		return "", err
	}
	return p.Spec.Containers[i].Name, nil
}

// ImageOnly reports whether the pod template to differs from from only in
// the image of container, the application's (OpenKruise's rule for
// in-place updates), and returns that image. Otherwise the error says what
// else the change touches. The pod-template-hash label a ReplicaSet adds
// is not part of the comparison.
func ImageOnly(from, to *corev1.PodTemplateSpec, container string) (image string, err error) {
	if len(from.Spec.Containers) != len(to.Spec.Containers) {
		return "", errors.New("the update changes its containers, not only an image")
	}
	changed := from.DeepCopy()
	for i := range changed.Spec.Containers {
		changed.Spec.Containers[i].Image = to.Spec.Containers[i].Image
		if from.Spec.Containers[i].Image == to.Spec.Containers[i].Image {
			continue
		}
		if to.Spec.Containers[i].Name != container {
			return "", fmt.Errorf("the update changes the image of container %s, which is not the application's (%s)", to.Spec.Containers[i].Name, container)
		}
		image = to.Spec.Containers[i].Image
	}
	if !EqualIgnoreHash(changed, to) {
		return "", errors.New("the update changes more of the pod template than an image")
	}
	if image == "" {
		return "", errors.New("the update changes nothing of the pod template handoff can apply in place")
	}
	return image, nil
}

// EqualIgnoreHash reports whether two pod templates are semantically
// equal but for the pod-template-hash label: the Deployment controller's
// test of which ReplicaSet holds a Deployment's template
// (k8s.io/kubernetes/pkg/controller/deployment/util.EqualIgnoreHash).
func EqualIgnoreHash(a, b *corev1.PodTemplateSpec) bool {
	a, b = a.DeepCopy(), b.DeepCopy()
	delete(a.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	delete(b.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	return equality.Semantic.DeepEqual(a, b)
}

// WithImage is tpl with container's image replaced.
func WithImage(tpl *corev1.PodTemplateSpec, container, image string) *corev1.PodTemplateSpec {
	out := tpl.DeepCopy()
	for i := range out.Spec.Containers {
		if out.Spec.Containers[i].Name == container {
			out.Spec.Containers[i].Image = image
		}
	}
	return out
}

// InPlaceRollout is the value of v1alpha1.InPlaceRolloutAnnotation (as
// JSON): the in-place rollout handoff runs on a Deployment it paused.
type InPlaceRollout struct {
	// ID names this rollout's Migrations; it changes with the target.
	ID string `json:"id"`
	// Container is the application's container.
	Container string `json:"container"`
	// From is its image in the template the rollout started from, which
	// the Deployment's current ReplicaSet still holds.
	From string `json:"from"`
	// To is the image the rollout moves the pods to.
	To string `json:"to"`
}

// InPlaceRolloutOf reads the Deployment's in-place rollout; ok is false
// when it has none (or one that cannot be read, which err says).
func InPlaceRolloutOf(d *appsv1.Deployment) (r InPlaceRollout, ok bool, err error) {
	v, found := d.Annotations[v1alpha1.InPlaceRolloutAnnotation]
	if !found {
		return InPlaceRollout{}, false, nil
	}
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return InPlaceRollout{}, false, fmt.Errorf("annotation %s of deployment %s/%s: %w", v1alpha1.InPlaceRolloutAnnotation, d.Namespace, d.Name, err)
	}
	if r.ID == "" || r.Container == "" || r.From == "" || r.To == "" {
		return InPlaceRollout{}, false, fmt.Errorf("annotation %s of deployment %s/%s lacks id, container, from or to: %s", v1alpha1.InPlaceRolloutAnnotation, d.Namespace, d.Name, v)
	}
	return r, true, nil
}

// String is the annotation's value.
func (r InPlaceRollout) String() string {
	b, _ := json.Marshal(r) // a struct of strings always encodes
	return string(b)
}

// ValidMode reports whether v is a value of v1alpha1.UpdateAnnotation
// handoff acts on.
func ValidMode(v string) bool {
	return v == string(v1alpha1.InPlaceIfPossible) || v == string(v1alpha1.InPlaceOnly)
}
