package controllers

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/handoff-dev/handoff/internal/workload"
)

func TestMaxUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		replicas int32
		ru       *appsv1.RollingUpdateDeployment
		want     int
	}{
		{"no rollingUpdate (Recreate)", 4, nil, 1},
		{"unset", 4, &appsv1.RollingUpdateDeployment{}, 1},
		{"number", 4, &appsv1.RollingUpdateDeployment{MaxUnavailable: ptr.To(intstr.FromInt32(3))}, 3},
		{"zero is at least one", 4, &appsv1.RollingUpdateDeployment{MaxUnavailable: ptr.To(intstr.FromInt32(0))}, 1},
		{"percent rounds down", 10, &appsv1.RollingUpdateDeployment{MaxUnavailable: ptr.To(intstr.FromString("25%"))}, 2},
		{"small percent is one", 3, &appsv1.RollingUpdateDeployment{MaxUnavailable: ptr.To(intstr.FromString("25%"))}, 1},
	} {
		d := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: ptr.To(tc.replicas), Strategy: appsv1.DeploymentStrategy{RollingUpdate: tc.ru}}}
		if got := maxUnavailable(d); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestCurrentReplicaSet(t *testing.T) {
	tpl := func(image, hash string) corev1.PodTemplateSpec {
		return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web", appsv1.DefaultDeploymentUniqueLabelKey: hash}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}
	}
	t0 := time.Now()
	rs := func(name, image string, replicas int32, age time.Duration) *appsv1.ReplicaSet {
		return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(t0.Add(-age))},
			Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To(replicas), Template: tpl(image, name)}}
	}
	d := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: tpl("app:2", "")}}
	delete(d.Spec.Template.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	ro := workload.InPlaceRollout{ID: "r", Container: "app", From: "app:1", To: "app:2"}
	for _, tc := range []struct {
		name string
		rss  []*appsv1.ReplicaSet
		want string
	}{
		{"the one with the starting template", []*appsv1.ReplicaSet{rs("old", "app:0", 0, 3*time.Hour), rs("cur", "app:1", 3, time.Hour)}, "cur"},
		{"starting template before the moved one (undo)", []*appsv1.ReplicaSet{rs("undo", "app:2", 0, 3*time.Hour), rs("cur", "app:1", 3, time.Hour)}, "cur"},
		{"moved already", []*appsv1.ReplicaSet{rs("old", "app:0", 0, 3*time.Hour), rs("cur", "app:2", 3, time.Hour)}, "cur"},
		{"one with pods before an older empty one", []*appsv1.ReplicaSet{rs("empty", "app:1", 0, 3*time.Hour), rs("cur", "app:1", 3, time.Hour)}, "cur"},
		{"else the oldest", []*appsv1.ReplicaSet{rs("b", "app:1", 0, time.Hour), rs("a", "app:1", 0, 2*time.Hour)}, "a"},
		{"none", []*appsv1.ReplicaSet{rs("other", "app:0", 3, time.Hour)}, ""},
	} {
		got := currentReplicaSet(d, ro, tc.rss)
		name := ""
		if got != nil {
			name = got.Name
		}
		if name != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, name, tc.want)
		}
	}
}
