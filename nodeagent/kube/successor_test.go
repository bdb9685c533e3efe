package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/handoff-dev/handoff/nodeagent/podid"
)

// The decision only reads pods: a fake client serves them (a real API
// server adds nothing here; the real-cluster suite runs the upgrade).
func TestSuccessors(t *testing.T) {
	pod := func(name, uid string, owner *metav1.OwnerReference, container, id string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "handoff-system", Name: name, UID: types.UID(uid)},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
				Name: container, ContainerID: "containerd://" + id,
			}}},
		}
		if owner != nil {
			p.OwnerReferences = []metav1.OwnerReference{*owner}
		}
		return p
	}
	ds := func(uid string) *metav1.OwnerReference {
		return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "handoff-nodeagent", UID: types.UID(uid), Controller: ptr.To(true)}
	}
	rs := &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "rs-1", Controller: ptr.To(true)}
	id := func(n string) string { return strings.Repeat(n, 64) }
	self := podid.Identity{PodUID: "self", ContainerID: id("a"), Runtime: "containerd"}
	for _, tc := range []struct {
		name string
		pods []*corev1.Pod
		peer podid.Identity
		want bool
		why  string
	}{
		{"the DaemonSet's new pod", []*corev1.Pod{
			pod("agent-old", "self", ds("ds-1"), "nodeagent", id("a")),
			pod("agent-new", "new", ds("ds-1"), "nodeagent", id("b")),
		}, podid.Identity{PodUID: "new", ContainerID: id("b")}, true, "of the agent's DaemonSet"},
		{"another DaemonSet", []*corev1.Pod{
			pod("agent-old", "self", ds("ds-1"), "nodeagent", id("a")),
			pod("other", "new", ds("ds-2"), "nodeagent", id("b")),
		}, podid.Identity{PodUID: "new", ContainerID: id("b")}, false, "is not of the agent's DaemonSet"},
		{"an application pod", []*corev1.Pod{
			pod("agent-old", "self", ds("ds-1"), "nodeagent", id("a")),
			pod("web-1", "new", rs, "app", id("b")),
		}, podid.Identity{PodUID: "new", ContainerID: id("b")}, false, "is not of the agent's DaemonSet"},
		{"another container of the new pod", []*corev1.Pod{
			pod("agent-old", "self", ds("ds-1"), "nodeagent", id("a")),
			pod("agent-new", "new", ds("ds-1"), "sidecar", id("b")),
		}, podid.Identity{PodUID: "new", ContainerID: id("b")}, false, `not in the agent's container "nodeagent"`},
		{"an agent not run by a DaemonSet", []*corev1.Pod{
			pod("agent-old", "self", nil, "nodeagent", id("a")),
			pod("agent-new", "new", ds("ds-1"), "nodeagent", id("b")),
		}, podid.Identity{PodUID: "new", ContainerID: id("b")}, false, "is not a DaemonSet's"},
		{"a pod not on this node", []*corev1.Pod{
			pod("agent-old", "self", ds("ds-1"), "nodeagent", id("a")),
		}, podid.Identity{PodUID: "new", ContainerID: id("b")}, false, "no pod with uid new on this node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scheme := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(scheme); err != nil {
				t.Fatal(err)
			}
			b := fake.NewClientBuilder().WithScheme(scheme)
			for _, p := range tc.pods {
				b = b.WithObjects(p)
			}
			s := &Successors{Client: b.Build(), Node: "n1"}
			got, why := s.Is(self, tc.peer)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Fatalf("Is = %v, %q; want %v, saying %q", got, why, tc.want, tc.why)
			}
		})
	}
	if ok, why := (&Successors{}).Is(self, podid.Identity{PodUID: "new"}); ok || why == "" {
		t.Fatalf("without a client: %v %q; want a refusal that says why", ok, why)
	}
}
