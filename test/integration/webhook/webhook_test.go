package webhook

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/controllers/webhookcert"
)

var enabled = map[string]string{v1alpha1.EnabledLabel: "true"}

// create creates p and returns it as the API server stored it.
func create(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	if err := k8s.Create(context.Background(), p); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
	return p
}

// injected describes what a pod got from the webhook, for one container.
type injected struct {
	volumes, mounts, envs, groups, gates int
}

func inspect(p *corev1.Pod, container string) injected {
	var in injected
	vol := ""
	for _, v := range p.Spec.Volumes {
		if v.HostPath != nil && v.HostPath.Path == socketDir {
			in.volumes++
			vol = v.Name
		}
	}
	for _, c := range p.Spec.Containers {
		if c.Name != container {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.MountPath == socketDir && m.Name == vol {
				in.mounts++
			}
		}
		for _, e := range c.Env {
			if e.Name == "HANDOFF_SOCKET" && e.Value == socketDir+"/agent.sock" {
				in.envs++
			}
		}
	}
	if sc := p.Spec.SecurityContext; sc != nil {
		for _, g := range sc.SupplementalGroups {
			if g == socketGroup {
				in.groups++
			}
		}
	}
	for _, g := range p.Spec.ReadinessGates {
		if g.ConditionType == v1alpha1.ConditionMigrated {
			in.gates++
		}
	}
	return in
}

var (
	full    = injected{1, 1, 1, 1, 0}
	gated   = injected{1, 1, 1, 1, 1}
	nothing = injected{}
)

func expect(t *testing.T, p *corev1.Pod, container string, want injected) {
	t.Helper()
	if got := inspect(p, container); got != want {
		t.Errorf("pod %s container %s: injected %+v, want %+v\nspec: %+v", p.Name, container, got, want, p.Spec)
	}
}

func daemonSet(t *testing.T, ns string) *appsv1.DaemonSet {
	t.Helper()
	sel := map[string]string{"app": "streamer"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "streamer"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}}},
		},
	}
	if err := k8s.Create(context.Background(), ds); err != nil {
		t.Fatalf("create daemonset: %v", err)
	}
	return ds
}

func ownedBy(p *corev1.Pod, ds *appsv1.DaemonSet) *corev1.Pod {
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: ptr(true)}}
	return p
}

// TestInjection: the API server, calling the webhook over TLS with the CA
// the manager issued, gets opted-in pods injected and leaves the rest.
func TestInjection(t *testing.T) {
	needAPIServer(t)
	startManager(t, systemNS).waitServing(t)
	ns := namespace(t, nil)

	t.Run("labelled pod", func(t *testing.T) {
		p := create(t, newPod(ns, "labelled", enabled, "app"))
		expect(t, p, "app", full)
		v := p.Spec.Volumes[0]
		if v.Name != "handoff" || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory {
			t.Errorf("volume %+v, want handoff, hostPath type Directory", v)
		}
		if got := p.Annotations[v1alpha1.InjectedAnnotation]; got != "app: volume,mount,env,group" {
			t.Errorf("annotation %s=%q", v1alpha1.InjectedAnnotation, got)
		}
	})
	t.Run("unlabelled pod", func(t *testing.T) {
		expect(t, create(t, newPod(ns, "plain", nil, "app")), "app", nothing)
		expect(t, create(t, newPod(ns, "other-value", map[string]string{v1alpha1.EnabledLabel: "yes"}, "app")), "app", nothing)
	})
	t.Run("readiness gate only for hostNetwork DaemonSet pods", func(t *testing.T) {
		ds := daemonSet(t, ns)
		hostNet := ownedBy(newPod(ns, "ds-hostnet", enabled, "app"), ds)
		hostNet.Spec.HostNetwork = true
		expect(t, create(t, hostNet), "app", gated)
		expect(t, create(t, ownedBy(newPod(ns, "ds-podnet", enabled, "app"), ds)), "app", full)
		bare := newPod(ns, "bare-hostnet", enabled, "app")
		bare.Spec.HostNetwork = true
		expect(t, create(t, bare), "app", full)
	})
	t.Run("namespace label", func(t *testing.T) {
		labelled := namespace(t, enabled)
		expect(t, create(t, newPod(labelled, "unlabelled", nil, "app")), "app", full)
		expect(t, create(t, newPod(labelled, "opted-out", map[string]string{v1alpha1.EnabledLabel: "false"}, "app")), "app", nothing)
		// Both entries match: injected once.
		expect(t, create(t, newPod(labelled, "both", enabled, "app")), "app", full)
	})
	t.Run("two containers", func(t *testing.T) {
		ds := daemonSet(t, namespace(t, nil))
		n := warnings.count()
		p := create(t, ownedBy(newPod(ds.Namespace, "two", enabled, "sidecar", "app"), ds))
		expect(t, p, "app", nothing)
		expect(t, p, "sidecar", nothing)
		if w := warnings.since(n); len(w) != 1 || !strings.Contains(w[0], "set the annotation handoff.dev/container") {
			t.Errorf("admission warnings %q, want one saying to set handoff.dev/container", w)
		}
		eventually(t, "NotInjectable Event on the DaemonSet", func() error {
			var list eventsv1.EventList
			if err := k8s.List(context.Background(), &list, client.InNamespace(ds.Namespace)); err != nil {
				return err
			}
			for _, e := range list.Items {
				if e.Regarding.UID == ds.UID && e.Reason == v1alpha1.ReasonNotInjectable && e.Type == corev1.EventTypeWarning &&
					strings.Contains(e.Note, `the pod has 2 containers ("sidecar", "app"): set the annotation handoff.dev/container`) {
					return nil
				}
			}
			return fmt.Errorf("events %+v", list.Items)
		})

		a := newPod(ns, "annotated", enabled, "sidecar", "app")
		a.Annotations = map[string]string{v1alpha1.ContainerAnnotation: "app"}
		a = create(t, a)
		expect(t, a, "app", full)
		if c := a.Spec.Containers[0]; len(c.Env) != 0 || len(c.VolumeMounts) != 0 {
			t.Errorf("the sidecar got %+v %+v", c.Env, c.VolumeMounts)
		}
	})
	t.Run("hand-written parts kept", func(t *testing.T) {
		p := newPod(ns, "by-hand", enabled, "app")
		p.Spec.Volumes = []corev1.Volume{{Name: "agent", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: socketDir}}}}
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "HANDOFF_SOCKET", Value: socketDir + "/agent.sock"}}
		p.Spec.SecurityContext = &corev1.PodSecurityContext{SupplementalGroups: []int64{socketGroup}}
		p = create(t, p)
		expect(t, p, "app", full)
		if len(p.Spec.Volumes) != 1 || p.Spec.Containers[0].VolumeMounts[0].Name != "agent" {
			t.Errorf("volumes %+v mounts %+v, want the hand-written volume mounted", p.Spec.Volumes, p.Spec.Containers[0].VolumeMounts)
		}
	})
}

// TestFailOpen: with no webhook answering, opted-in pods are still
// created (failurePolicy Ignore), unchanged.
func TestFailOpen(t *testing.T) {
	needAPIServer(t)
	m := startManager(t, systemNS)
	m.waitServing(t)
	ns := namespace(t, nil)
	expect(t, create(t, newPod(ns, "served", enabled, "app")), "app", full)
	m.stop()
	expect(t, create(t, newPod(ns, "unserved", enabled, "app")), "app", nothing)
}

// TestCertificateAcrossRestart: a restarted manager reuses the Secret (the
// same CA, the Secret not rewritten), puts the CA back into a caBundle
// that lost it, and restores it at once when someone changes it.
func TestCertificateAcrossRestart(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	first := startManager(t, systemNS)
	first.waitServing(t)
	var before corev1.Secret
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: webhookSecret}, &before); err != nil {
		t.Fatal(err)
	}
	first.stop()

	// As after a reinstall of the configuration: no caBundle.
	setCABundles(t, nil)
	second := startManager(t, systemNS)
	second.waitServing(t) // which waits for the caBundle to be the Secret's CA
	var after corev1.Secret
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: systemNS, Name: webhookSecret}, &after); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion || string(after.Data[webhookcert.KeyCACert]) != string(before.Data[webhookcert.KeyCACert]) {
		t.Errorf("the restarted manager rewrote its valid Secret (resourceVersion %s -> %s)", before.ResourceVersion, after.ResourceVersion)
	}

	// Someone puts another certificate there: the watch restores the CA
	// long before the rotator's hourly check.
	setCABundles(t, after.Data[webhookcert.KeyTLSCert])
	eventually(t, "caBundle restored", func() error {
		for i, b := range caBundles(t) {
			if string(b) != string(after.Data[webhookcert.KeyCACert]) {
				return fmt.Errorf("entry %d: caBundle is not the CA", i)
			}
		}
		return nil
	})
	expect(t, create(t, newPod(namespace(t, nil), "after-restart", enabled, "app")), "app", full)
}

// TestReadinessWaitsForCertificate: /readyz fails while the manager has no
// certificate to serve (here: its Secret's namespace does not exist yet),
// and passes once it has one.
func TestReadinessWaitsForCertificate(t *testing.T) {
	needAPIServer(t)
	const ns = "handoff-late"
	m := startManager(t, ns)
	eventually(t, "readyz answers and fails on the webhook", func() error {
		err := m.readyz()
		if err == nil {
			return fmt.Errorf("ready without a certificate")
		}
		if !strings.Contains(err.Error(), "[-]webhook failed") {
			return err
		}
		return nil
	})
	if err := m.readyz(); err == nil {
		t.Fatalf("ready without a certificate")
	}
	var s corev1.Secret
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: webhookSecret}, &s); !apierrors.IsNotFound(err) {
		t.Fatalf("secret in a namespace that does not exist: %v", err)
	}
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	m.waitServing(t)
}

func setCABundles(t *testing.T, ca []byte) {
	t.Helper()
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	if err := k8s.Get(context.Background(), client.ObjectKey{Name: configName}, &wh); err != nil {
		t.Fatal(err)
	}
	for i := range wh.Webhooks {
		wh.Webhooks[i].ClientConfig.CABundle = slices.Clone(ca)
	}
	if err := k8s.Update(context.Background(), &wh); err != nil {
		t.Fatalf("set caBundles: %v", err)
	}
}
