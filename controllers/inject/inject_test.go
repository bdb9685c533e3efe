package inject

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

var cfg = Config{SocketDir: "/run/handoff/", SocketGroup: 2750}

func pod(containers ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "img:1"})
	}
	return p
}

func ownedBy(p *corev1.Pod, apiVersion, kind string, controller bool) *corev1.Pod {
	p.OwnerReferences = append(p.OwnerReferences, metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: "owner", UID: "uid-1", Controller: ptr(controller)})
	return p
}

func TestInjectAddsEverything(t *testing.T) {
	p := ownedBy(pod("sidecar", "app"), "apps/v1", "DaemonSet", true)
	p.Spec.HostNetwork = true
	p.Annotations = map[string]string{v1alpha1.ContainerAnnotation: "app"}
	res, err := Inject(p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{AddedVolume, AddedMount, AddedEnv, AddedGroup, AddedGate}; res.Container != "app" || !slices.Equal(res.Added, want) {
		t.Fatalf("result %+v, want container app and %v", res, want)
	}
	want := corev1.PodSpec{
		HostNetwork: true,
		Containers: []corev1.Container{{Name: "sidecar", Image: "img:1"}, {Name: "app", Image: "img:1",
			Env:          []corev1.EnvVar{{Name: "HANDOFF_SOCKET", Value: "/run/handoff/agent.sock"}},
			VolumeMounts: []corev1.VolumeMount{{Name: "handoff", MountPath: "/run/handoff"}}}},
		Volumes: []corev1.Volume{{Name: "handoff", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: "/run/handoff", Type: ptr(corev1.HostPathDirectory)}}}},
		SecurityContext: &corev1.PodSecurityContext{SupplementalGroups: []int64{2750}},
		ReadinessGates:  []corev1.PodReadinessGate{{ConditionType: "handoff.dev/migrated"}},
	}
	if !equality.Semantic.DeepEqual(p.Spec, want) {
		t.Errorf("injected spec\n%+v\nwant\n%+v", p.Spec, want)
	}
	if got := p.Annotations[v1alpha1.InjectedAnnotation]; got != "app: volume,mount,env,group,gate" {
		t.Errorf("annotation %s=%q", v1alpha1.InjectedAnnotation, got)
	}

	// Idempotent: the second webhook entry, or a reinvocation, adds nothing.
	before := p.DeepCopy()
	res, err = Inject(p, cfg)
	if err != nil || len(res.Added) != 0 {
		t.Errorf("second Inject added %v (err %v)", res.Added, err)
	}
	if !equality.Semantic.DeepEqual(p, before) {
		t.Errorf("second Inject changed the pod")
	}
}

func TestInjectKeepsWhatTheUserWrote(t *testing.T) {
	p := pod("app")
	p.Spec.Volumes = []corev1.Volume{
		{Name: "handoff", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}, // the name, not the path
		{Name: "agent", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/handoff"}}},
	}
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "HANDOFF_SOCKET", Value: "/elsewhere/agent.sock"}}
	p.Spec.SecurityContext = &corev1.PodSecurityContext{SupplementalGroups: []int64{5, 2750}}
	res, err := Inject(p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Added, []string{AddedMount}) {
		t.Errorf("added %v, want only the mount", res.Added)
	}
	c := p.Spec.Containers[0]
	if want := []corev1.VolumeMount{{Name: "agent", MountPath: "/run/handoff"}}; !equality.Semantic.DeepEqual(c.VolumeMounts, want) {
		t.Errorf("mounts %+v, want the user's volume mounted: %+v", c.VolumeMounts, want)
	}
	if len(p.Spec.Volumes) != 2 || len(c.Env) != 1 || c.Env[0].Value != "/elsewhere/agent.sock" || !slices.Equal(p.Spec.SecurityContext.SupplementalGroups, []int64{5, 2750}) {
		t.Errorf("changed what the user wrote: volumes %+v env %+v groups %v", p.Spec.Volumes, c.Env, p.Spec.SecurityContext.SupplementalGroups)
	}
	if len(p.Spec.ReadinessGates) != 0 {
		t.Errorf("a bare pod got the readiness gate, which nobody would set")
	}

	// A volume named "handoff" for something else: the injected one
	// takes another name.
	p = pod("app")
	p.Spec.Volumes = []corev1.Volume{{Name: "handoff", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "handoff", MountPath: "/data"}}
	if _, err := Inject(p, cfg); err != nil {
		t.Fatal(err)
	}
	if v := p.Spec.Volumes[1]; v.Name != "handoff-2" || v.HostPath == nil {
		t.Errorf("injected volume %+v, want handoff-2", v)
	}
	if m := p.Spec.Containers[0].VolumeMounts[1]; m.Name != "handoff-2" || m.MountPath != "/run/handoff" {
		t.Errorf("injected mount %+v", m)
	}
}

func TestInjectRefusesAmbiguousPod(t *testing.T) {
	p := pod("a", "b")
	before := p.DeepCopy()
	if _, err := Inject(p, cfg); err == nil {
		t.Fatalf("Inject chose a container among two without the annotation")
	}
	if !equality.Semantic.DeepEqual(p, before) {
		t.Errorf("a refused pod was changed")
	}
}

// recorder records the Events the webhook emits.
type recorder struct{ events []string }

func (r *recorder) Eventf(regarding, _ runtime.Object, typ, reason, action, note string, args ...any) {
	ref := regarding.(*corev1.ObjectReference)
	r.events = append(r.events, fmt.Sprintf("%s %s/%s/%s %s %s: %s", typ, ref.Kind, ref.Namespace, ref.Name, reason, action, fmt.Sprintf(note, args...)))
}

func request(t *testing.T, p *corev1.Pod, op admissionv1.Operation, dryRun bool) admission.Request {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "req-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: p.Namespace, Name: p.Name,
		Operation: op, Object: runtime.RawExtension{Raw: raw}, DryRun: ptr(dryRun),
	}}
}

func TestWebhookHandle(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	w := &Webhook{Config: cfg, Recorder: rec}

	resp := w.Handle(ctx, request(t, pod("app"), admissionv1.Create, false))
	if !resp.Allowed || len(resp.Patches) == 0 || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("labelled single-container pod: allowed %v, %d patches", resp.Allowed, len(resp.Patches))
	}
	var paths []string
	for _, p := range resp.Patches {
		paths = append(paths, p.Operation+" "+p.Path)
	}
	for _, want := range []string{"add /spec/volumes", "add /spec/securityContext"} {
		if !slices.Contains(paths, want) {
			t.Errorf("patch %v lacks %q", paths, want)
		}
	}

	injected := pod("app")
	if _, err := Inject(injected, cfg); err != nil {
		t.Fatal(err)
	}
	if resp := w.Handle(ctx, request(t, injected, admissionv1.Create, false)); !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("already injected pod: allowed %v, patches %v", resp.Allowed, resp.Patches)
	}

	optedOut := pod("app")
	optedOut.Labels = map[string]string{v1alpha1.EnabledLabel: "false"}
	if resp := w.Handle(ctx, request(t, optedOut, admissionv1.Create, false)); !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("pod labelled false: allowed %v, patches %v", resp.Allowed, resp.Patches)
	}
	if resp := w.Handle(ctx, request(t, pod("app"), admissionv1.Update, false)); !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("update: allowed %v, patches %v", resp.Allowed, resp.Patches)
	}

	// Two containers: admitted unchanged, a warning, an Event on the owner
	// but not on a dry run, and none without an owner.
	amb := ownedBy(pod("a", "b"), "apps/v1", "ReplicaSet", true)
	resp = w.Handle(ctx, request(t, amb, admissionv1.Create, true))
	if !resp.Allowed || len(resp.Patches) != 0 || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "handoff.dev/container") {
		t.Errorf("two containers, dry run: allowed %v patches %v warnings %q", resp.Allowed, resp.Patches, resp.Warnings)
	}
	if len(rec.events) != 0 {
		t.Errorf("dry run recorded %q", rec.events)
	}
	resp = w.Handle(ctx, request(t, amb, admissionv1.Create, false))
	if !resp.Allowed || len(resp.Patches) != 0 || len(resp.Warnings) != 1 {
		t.Errorf("two containers: allowed %v patches %v warnings %q", resp.Allowed, resp.Patches, resp.Warnings)
	}
	if len(rec.events) != 1 || !strings.HasPrefix(rec.events[0], "Warning ReplicaSet/ns/owner NotInjectable Inject: handoff did not inject pod p: the pod has 2 containers") {
		t.Errorf("events %q, want one NotInjectable on ReplicaSet ns/owner", rec.events)
	}
	w.Handle(ctx, request(t, pod("a", "b"), admissionv1.Create, false))
	if len(rec.events) != 1 {
		t.Errorf("a pod without owner recorded %q", rec.events[1:])
	}
}
