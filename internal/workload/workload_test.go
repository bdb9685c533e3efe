package workload

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

func pod(containers ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "img:1"})
	}
	return p
}

func ownedBy(p *corev1.Pod, apiVersion, kind string, controller bool) *corev1.Pod {
	p.OwnerReferences = append(p.OwnerReferences, metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: "owner", UID: "uid-1", Controller: ptr.To(controller)})
	return p
}

func TestAppContainer(t *testing.T) {
	annotated := func(p *corev1.Pod, c string) *corev1.Pod {
		p.Annotations = map[string]string{v1alpha1.ContainerAnnotation: c}
		return p
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want int
		msg  []string // what the error must say, when want < 0
	}{
		{"only container", pod("app"), 0, nil},
		{"annotated", annotated(pod("sidecar", "app"), "app"), 1, nil},
		{"annotated single", annotated(pod("app"), "app"), 0, nil},
		{"several, no annotation", pod("sidecar", "app"), -1, []string{`2 containers ("sidecar", "app")`, "set the annotation handoff.dev/container"}},
		{"annotation names none", annotated(pod("sidecar", "app"), "ap"), -1, []string{`handoff.dev/container="ap" names no container`, `("sidecar", "app")`}},
		{"annotation names none of one", annotated(pod("app"), "web"), -1, []string{`"web"`}},
		{"no containers", pod(), -1, []string{"0 containers"}},
	} {
		got, err := AppContainer(tc.pod)
		if got != tc.want {
			t.Errorf("%s: container %d, want %d (err %v)", tc.name, got, tc.want, err)
		}
		if tc.want >= 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, m := range tc.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, m)
			}
		}
	}
}

func TestNeedsGate(t *testing.T) {
	host := func(p *corev1.Pod) *corev1.Pod { p.Spec.HostNetwork = true; return p }
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"hostNetwork DaemonSet pod", host(ownedBy(pod("app"), "apps/v1", "DaemonSet", true)), true},
		{"pod-network DaemonSet pod", ownedBy(pod("app"), "apps/v1", "DaemonSet", true), false},
		{"hostNetwork, DaemonSet not controller", host(ownedBy(pod("app"), "apps/v1", "DaemonSet", false)), false},
		{"hostNetwork ReplicaSet pod", host(ownedBy(pod("app"), "apps/v1", "ReplicaSet", true)), false},
		{"hostNetwork, someone else's DaemonSet kind", host(ownedBy(pod("app"), "example.com/v1", "DaemonSet", true)), false},
		{"hostNetwork bare pod", host(pod("app")), false},
	} {
		if got := NeedsGate(tc.pod); got != tc.want {
			t.Errorf("%s: NeedsGate %v, want %v", tc.name, got, tc.want)
		}
	}
}
