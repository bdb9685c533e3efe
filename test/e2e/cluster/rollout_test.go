package cluster

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	handoffv1 "github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/internal/workload"
)

// streamerDaemonSet is what a user writes for a node-level streaming
// service that keeps its connections through rollouts: the label, the
// host network, the surge strategy and a readiness probe that follows the
// handoff. The webhook adds the agent's socket, its group and the gate.
func streamerDaemonSet(ns, image string, port int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: streamer
  namespace: %s
spec:
  selector:
    matchLabels: {app: streamer}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
`, ns) + streamerTemplate(image, port, true)
}

// streamerTemplate is the pod template of the streamer workloads: the
// opt-in label, a readiness probe that follows the handoff, and nothing
// the webhook injects. On the host network it serves port and lingers
// after handing over (a DaemonSet's pods restart always).
func streamerTemplate(image string, port int, hostNetwork bool) string {
	host, linger := "", ""
	if hostNetwork {
		host, linger = "\n      hostNetwork: true\n      dnsPolicy: ClusterFirstWithHostNet", `, "--linger"`
	}
	return fmt.Sprintf(`  template:
    metadata:
      labels: {app: streamer, handoff.dev/enabled: "true"}
    spec:%[6]s
      terminationGracePeriodSeconds: 2
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
      - name: %[4]s
        image: %[1]s
        imagePullPolicy: IfNotPresent
        args: ["--addr=:%[2]d", "--rate=8192", "--tick=50ms", "--ready-file=%[3]s"%[5]s]
        readinessProbe:
          exec: {command: ["/streamer", "--ready-file=%[3]s", "--check"]}
          periodSeconds: 1
        volumeMounts: [{name: run, mountPath: /var/run/streamer}]
      volumes:
      - {name: run, emptyDir: {medium: Memory}}
`, image, port, readyFile, streamerName, linger, host)
}

// testDaemonSetSurge deploys a labelled hostNetwork DaemonSet, streams
// from it, and rolls it out with kubectl set image: the new pod on the node
// takes every connection from the old one before the DaemonSet controller
// deletes it, and kubectl rollout status reports the rollout done.
func (s *suite) testDaemonSetSurge(t *testing.T) {
	ctx := context.Background()
	ns := s.namespace(t, "ds-surge")
	addr, old := s.deployDaemonSet(t, ns)
	s.checkInjected(t, old, true)
	if c := workload.GateCondition(old); c == nil || c.Status != corev1.ConditionTrue || c.Reason != handoffv1.ReasonNoPredecessor {
		t.Fatalf("the first pod's gate is %+v; want True with reason %s", c, handoffv1.ReasonNoPredecessor)
	}
	waitServing(t, addr)
	lc := s.startClients(t, addr, clientStreams)
	lc.ResetStall()

	start := time.Now()
	s.run(t, time.Minute, s.kubectl, "set", "image", "-n", ns, "ds/streamer", streamerName+"="+s.streamerNext)
	s.run(t, 4*time.Minute, s.kubectl, "rollout", "status", "-n", ns, "ds/streamer", "--timeout=3m")
	s.timing("%s: kubectl set image ds/streamer → rollout status done in %v", ns, time.Since(start).Round(time.Millisecond))

	var migs handoffv1.MigrationList
	if err := s.c.List(ctx, &migs, client.InNamespace(ns), client.MatchingLabels{handoffv1.WorkloadLabel: "streamer"}); err != nil {
		t.Fatal(err)
	}
	if len(migs.Items) != 1 {
		t.Fatalf("%d Migrations of the DaemonSet; want one for the one node", len(migs.Items))
	}
	m := &migs.Items[0]
	wantCompleted(t, m, clientStreams)
	if m.Spec.Source.Pod != old.Name {
		t.Errorf("migration %s moved from pod %s; want the old pod %s", m.Name, m.Spec.Source.Pod, old.Name)
	}
	if m.Status.CompletionTime != nil {
		s.timing("%s: kubectl set image → Migration %s Completed in %v (pause %v)", ns, m.Name,
			m.Status.CompletionTime.Sub(start).Round(time.Millisecond), m.Status.Pause.Duration)
	}
	s.waitPodGone(t, ns, old.Name)
	cur := s.onlyPod(t, ns)
	if cur.Name != m.Spec.Target.Pod || cur.Spec.Containers[0].Image != s.streamerNext {
		t.Fatalf("pod %s (image %s) runs; want the Migration's target %s with image %s", cur.Name, cur.Spec.Containers[0].Image, m.Spec.Target.Pod, s.streamerNext)
	}
	if c := workload.GateCondition(cur); c == nil || c.Status != corev1.ConditionTrue || c.Reason != handoffv1.ReasonMigrated {
		t.Fatalf("the new pod's gate is %+v; want True with reason %s", c, handoffv1.ReasonMigrated)
	}
	var ds appsv1.DaemonSet
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &ds); err != nil {
		t.Fatal(err)
	}
	if st := ds.Status; st.UpdatedNumberScheduled != 1 || st.NumberAvailable != 1 || st.DesiredNumberScheduled != 1 || st.NumberUnavailable != 0 {
		t.Fatalf("DaemonSet status %+v; want one pod, updated and available", st)
	}
	s.checkClients(t, lc, "kubectl set image ds/streamer")
	t.Logf("longest client stall during the rollout: %v", lc.Snapshot().LongestStall)
	s.stopClients(t, lc)
}

// deployDaemonSet applies streamerDaemonSet on a free port of the node and
// waits for its rollout; it returns the address clients use and the pod.
func (s *suite) deployDaemonSet(t *testing.T, ns string) (string, *corev1.Pod) {
	t.Helper()
	port := freePort(t)
	s.runInput(t, time.Minute, streamerDaemonSet(ns, s.streamer, port), s.kubectl, "apply", "-f", "-")
	s.run(t, 3*time.Minute, s.kubectl, "rollout", "status", "-n", ns, "ds/streamer", "--timeout=2m")
	return net.JoinHostPort(s.nodeIP, strconv.Itoa(port)), s.onlyPod(t, ns)
}

// onlyPod is the one pod of the namespace that is not being deleted.
func (s *suite) onlyPod(t *testing.T, ns string) *corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := s.c.List(context.Background(), &pods, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	if len(live) != 1 {
		names := make([]string, 0, len(live))
		for _, p := range live {
			names = append(names, p.Name)
		}
		t.Fatalf("pods %v in %s; want exactly one", names, ns)
	}
	return &live[0]
}

// checkInjected checks that the webhook gave the pod what
// config/samples/streamer.yaml writes by hand, and the gate when gate is
// set (else that it did not).
func (s *suite) checkInjected(t *testing.T, p *corev1.Pod, gate bool) {
	t.Helper()
	var missing []string
	hasVolume := false
	for _, v := range p.Spec.Volumes {
		hasVolume = hasVolume || v.HostPath != nil && v.HostPath.Path == "/run/handoff"
	}
	if !hasVolume {
		missing = append(missing, "the /run/handoff hostPath volume")
	}
	c := p.Spec.Containers[0]
	hasMount, hasEnv := false, false
	for _, m := range c.VolumeMounts {
		hasMount = hasMount || m.MountPath == "/run/handoff"
	}
	for _, e := range c.Env {
		hasEnv = hasEnv || e.Name == "HANDOFF_SOCKET" && e.Value == "/run/handoff/agent.sock"
	}
	if !hasMount {
		missing = append(missing, "its mount")
	}
	if !hasEnv {
		missing = append(missing, "HANDOFF_SOCKET")
	}
	hasGroup := false
	if sc := p.Spec.SecurityContext; sc != nil {
		for _, g := range sc.SupplementalGroups {
			hasGroup = hasGroup || g == socketGroup
		}
	}
	if !hasGroup {
		missing = append(missing, fmt.Sprintf("supplemental group %d", socketGroup))
	}
	if workload.HasGate(p) != gate {
		missing = append(missing, fmt.Sprintf("the %s readiness gate as it should (%v)", handoffv1.ConditionMigrated, gate))
	}
	if len(missing) > 0 {
		t.Fatalf("pod %s was not injected with %s", p.Name, strings.Join(missing, ", "))
	}
}

// streamerStatefulSet is a pod-network StatefulSet of streamers whose
// rollouts handoff makes in place.
func streamerStatefulSet(ns, image string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: streamer
  namespace: %s
  annotations: {handoff.dev/update: InPlaceIfPossible}
spec:
  serviceName: streamer
  replicas: %d
  podManagementPolicy: Parallel
  updateStrategy: {type: OnDelete}
  selector:
    matchLabels: {app: streamer}
`, ns, replicas) + streamerTemplate(image, podPort, false)
}

// testStatefulSetInPlace rolls a three-pod StatefulSet out with kubectl set
// image: each pod, from the highest ordinal down, restarts its container
// in place while the agent holds its sockets, and the StatefulSet counts
// it updated; clients on the pod IPs keep every stream.
func (s *suite) testStatefulSetInPlace(t *testing.T) {
	const replicas = 3
	ctx := context.Background()
	ns := s.namespace(t, "sts-in-place")
	s.runInput(t, time.Minute, streamerStatefulSet(ns, s.streamer, replicas), s.kubectl, "apply", "-f", "-")
	before := map[string]corev1.Pod{}
	var clients []*loadclient.Client
	for i := range replicas {
		name := fmt.Sprintf("streamer-%d", i)
		p := s.waitCreatedPodReady(t, ns, name)
		s.checkInjected(t, p, false)
		before[name] = *p
		addr := net.JoinHostPort(p.Status.PodIP, strconv.Itoa(podPort))
		waitServing(t, addr)
		clients = append(clients, s.startClients(t, addr, clientStreams/replicas))
	}

	var st appsv1.StatefulSet
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &st); err != nil {
		t.Fatal(err)
	}
	initial := st.Status.UpdateRevision
	start := time.Now()
	s.run(t, time.Minute, s.kubectl, "set", "image", "-n", ns, "sts/streamer", streamerName+"="+s.streamerNext)
	waitFor(t, "the StatefulSet's "+strconv.Itoa(replicas)+" pods updated", 4*time.Minute, func() (bool, string, error) {
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &st); err != nil {
			return false, "", err
		}
		return st.Status.ObservedGeneration == st.Generation && st.Status.UpdateRevision != initial &&
				st.Status.UpdatedReplicas == replicas && st.Status.ReadyReplicas == replicas,
			fmt.Sprintf("revision %s, updated %d, ready %d", st.Status.UpdateRevision, st.Status.UpdatedReplicas, st.Status.ReadyReplicas), nil
	})
	s.timing("%s: kubectl set image sts/streamer → %d pods updated in place in %v", ns, replicas, time.Since(start).Round(time.Millisecond))

	var migs handoffv1.MigrationList
	if err := s.c.List(ctx, &migs, client.InNamespace(ns), client.MatchingLabels{handoffv1.WorkloadLabel: "streamer"}); err != nil {
		t.Fatal(err)
	}
	if len(migs.Items) != replicas {
		t.Fatalf("%d Migrations of the StatefulSet; want one per pod", len(migs.Items))
	}
	for i := range migs.Items {
		m := &migs.Items[i]
		wantCompleted(t, m, clientStreams/replicas)
		// Object timestamps have one-second resolution.
		s.timing("%s: pod %s: Migration %s created %v after set image, Completed %v later; %s", ns, m.Spec.Source.Pod, m.Name,
			max(0, m.CreationTimestamp.Sub(start)).Round(time.Second), m.Status.CompletionTime.Sub(m.CreationTimestamp.Time).Round(time.Second), m.Status.Message)
	}
	for name, old := range before {
		var p corev1.Pod
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
			t.Fatal(err)
		}
		was, now := containerStatus(t, &old), containerStatus(t, &p)
		if p.UID != old.UID || p.Status.PodIP != old.Status.PodIP || now.RestartCount != was.RestartCount+1 || p.Spec.Containers[0].Image != s.streamerNext {
			t.Errorf("pod %s: uid %s → %s, ip %s → %s, restarts %d → %d, image %s; want the same pod restarted once with %s",
				name, old.UID, p.UID, old.Status.PodIP, p.Status.PodIP, was.RestartCount, now.RestartCount, p.Spec.Containers[0].Image, s.streamerNext)
		}
	}
	for _, lc := range clients {
		s.checkClients(t, lc, "kubectl set image sts/streamer")
		s.stopClients(t, lc)
	}
}

// waitCreatedPodReady waits until a pod that its controller is about to
// create exists and is Ready.
func (s *suite) waitCreatedPodReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	waitFor(t, "pod "+name+" created", 2*time.Minute, func() (bool, string, error) {
		err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &corev1.Pod{})
		if apierrors.IsNotFound(err) {
			return false, "not created yet", nil
		}
		return err == nil, "", err
	})
	return s.waitPodReady(t, ns, name)
}

// testDaemonSetSurgeCrash rolls a labelled hostNetwork DaemonSet out to an
// image that crashes on start (the handoff image, whose /manager refuses
// the streamer's flags): under on-failure Pause, the default, the handoff
// fails at its deadline, the gate stays closed, the old pod serves every
// client on and the rollout stops, with the reason on the new pod's
// condition and an Event on the DaemonSet. on-failure Recreate then
// opens the gate (the old pod stays while the new one is not Ready, as
// without handoff). Setting the image back rolls out with a handoff
// again.
func (s *suite) testDaemonSetSurgeCrash(t *testing.T) {
	ctx := context.Background()
	ns := s.namespace(t, "ds-surge-crash")
	addr, old := s.deployDaemonSet(t, ns)
	waitServing(t, addr)
	lc := s.startClients(t, addr, clientStreams)
	// A short deadline for the handoff, so that the failure comes soon.
	s.run(t, time.Minute, s.kubectl, "annotate", "-n", ns, "ds/streamer", handoffv1.TimeoutAnnotation+"=20s")

	start := time.Now()
	crashing := s.imageRepo + ":" + s.imageTag
	s.run(t, time.Minute, s.kubectl, "set", "image", "-n", ns, "ds/streamer", streamerName+"="+crashing)
	var newPod corev1.Pod
	waitFor(t, "the new pod's gate closed by the failed handoff", 2*time.Minute, func() (bool, string, error) {
		var pods corev1.PodList
		if err := s.c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		for _, p := range pods.Items {
			if p.Name == old.Name {
				continue
			}
			newPod = p
			if c := workload.GateCondition(&p); c != nil {
				return c.Reason == handoffv1.ReasonMigrationFailed, c.Reason + ": " + c.Message, nil
			}
			return false, "no gate condition yet", nil
		}
		return false, "no new pod yet", nil
	})
	c := workload.GateCondition(&newPod)
	s.timing("%s: kubectl set image to a crashing image → handoff failed, rollout paused, in %v", ns, time.Since(start).Round(time.Millisecond))
	t.Logf("new pod %s: %s", newPod.Name, c.Message)
	var oldNow corev1.Pod
	if err := s.c.Get(ctx, client.ObjectKeyFromObject(old), &oldNow); err != nil || oldNow.DeletionTimestamp != nil {
		t.Fatalf("the old pod after the failed handoff: %v, deleting %v; want it serving", err, oldNow.DeletionTimestamp)
	}
	if podCondition(&newPod, corev1.PodReady).Status == corev1.ConditionTrue {
		t.Fatalf("the new pod %s is Ready after its handoff failed", newPod.Name)
	}
	var evs eventsv1.EventList
	if err := s.c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	warned := false
	for _, e := range evs.Items {
		warned = warned || e.Regarding.Kind == "DaemonSet" && e.Reason == handoffv1.ReasonMigrationFailed
	}
	if !warned {
		t.Errorf("no %s Event on the DaemonSet", handoffv1.ReasonMigrationFailed)
	}
	s.checkClients(t, lc, "a handoff to a crashing image")

	// Recreate opens the gate; as Kubernetes would without handoff, the
	// old pod stays until the new one is Ready, which a crashing image
	// never is.
	s.run(t, time.Minute, s.kubectl, "annotate", "-n", ns, "ds/streamer", handoffv1.OnFailureAnnotation+"="+string(handoffv1.OnFailureRecreate))
	waitFor(t, "the gate opened by on-failure Recreate", time.Minute, func() (bool, string, error) {
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(&newPod), &newPod); err != nil {
			return false, "", err
		}
		c := workload.GateCondition(&newPod)
		return c != nil && c.Status == corev1.ConditionTrue && c.Reason == handoffv1.ReasonRecreated, fmt.Sprintf("%+v", c), nil
	})
	if err := s.c.Get(ctx, client.ObjectKeyFromObject(old), &oldNow); err != nil || oldNow.DeletionTimestamp != nil {
		t.Fatalf("the old pod after Recreate with a new pod that is not Ready: %v, deleting %v; want it serving", err, oldNow.DeletionTimestamp)
	}
	s.checkClients(t, lc, "on-failure Recreate with a crashing image")

	// Back to the good image: the crashing pod goes, and a new one takes
	// the sockets over.
	s.run(t, time.Minute, s.kubectl, "set", "image", "-n", ns, "ds/streamer", streamerName+"="+s.streamerNext)
	s.run(t, 4*time.Minute, s.kubectl, "rollout", "status", "-n", ns, "ds/streamer", "--timeout=3m")
	s.waitPodGone(t, ns, old.Name)
	cur := s.onlyPod(t, ns)
	if cur.Spec.Containers[0].Image != s.streamerNext || !workload.GateOpen(cur) {
		t.Fatalf("pod %s runs %s, gate %+v; want %s with its gate open", cur.Name, cur.Spec.Containers[0].Image, workload.GateCondition(cur), s.streamerNext)
	}
	s.checkClients(t, lc, "setting the image back")
	s.stopClients(t, lc)
}

// testStatefulSetNotImageOnly changes more than an image of an in-place
// StatefulSet (InPlaceIfPossible): the pods cannot restart in place, so
// each is deleted and the StatefulSet controller recreates it at the new
// revision, as without handoff, with an Event that says why.
func (s *suite) testStatefulSetNotImageOnly(t *testing.T) {
	const replicas = 2
	ctx := context.Background()
	ns := s.namespace(t, "sts-not-image-only")
	s.runInput(t, time.Minute, streamerStatefulSet(ns, s.streamer, replicas), s.kubectl, "apply", "-f", "-")
	uids := map[string]string{}
	for i := range replicas {
		p := s.waitCreatedPodReady(t, ns, fmt.Sprintf("streamer-%d", i))
		uids[p.Name] = string(p.UID)
	}
	var st appsv1.StatefulSet
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &st); err != nil {
		t.Fatal(err)
	}
	initial := st.Status.UpdateRevision
	start := time.Now()
	s.run(t, time.Minute, s.kubectl, "set", "env", "-n", ns, "sts/streamer", "GREETING=hello")
	waitFor(t, "the StatefulSet's pods recreated at the new revision", 4*time.Minute, func() (bool, string, error) {
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &st); err != nil {
			return false, "", err
		}
		return st.Status.ObservedGeneration == st.Generation && st.Status.UpdateRevision != initial &&
				st.Status.UpdatedReplicas == replicas && st.Status.ReadyReplicas == replicas,
			fmt.Sprintf("updated %d, ready %d", st.Status.UpdatedReplicas, st.Status.ReadyReplicas), nil
	})
	s.timing("%s: kubectl set env sts/streamer → %d pods recreated in %v", ns, replicas, time.Since(start).Round(time.Millisecond))
	for name, uid := range uids {
		var p corev1.Pod
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
			t.Fatal(err)
		}
		if string(p.UID) == uid {
			t.Errorf("pod %s has its old uid: it was not recreated", name)
		}
	}
	var migs handoffv1.MigrationList
	if err := s.c.List(ctx, &migs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(migs.Items) != 0 {
		t.Errorf("%d Migrations for a change that is not image-only; want none", len(migs.Items))
	}
	var evs eventsv1.EventList
	if err := s.c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	said := false
	for _, e := range evs.Items {
		said = said || e.Reason == handoffv1.ReasonNotInPlace && strings.Contains(e.Note, "more of the pod template than an image")
	}
	if !said {
		t.Errorf("no %s Event saying the change is more than an image", handoffv1.ReasonNotInPlace)
	}
}

// testWebhookDown stops the manager and creates a labelled pod: the
// webhook fails open, so the pod starts uninjected and its streamer
// serves without handoff; then the manager comes back.
func (s *suite) testWebhookDown(t *testing.T) {
	ctx := context.Background()
	ns := s.namespace(t, "webhook-down")
	dep := release + "-manager"
	s.run(t, time.Minute, s.kubectl, "scale", "-n", systemNS, "deploy/"+dep, "--replicas=0")
	t.Cleanup(func() {
		s.run(t, time.Minute, s.kubectl, "scale", "-n", systemNS, "deploy/"+dep, "--replicas=1")
		s.run(t, 3*time.Minute, s.kubectl, "rollout", "status", "-n", systemNS, "deploy/"+dep, "--timeout=2m")
	})
	waitFor(t, "no manager pod", 2*time.Minute, func() (bool, string, error) {
		var pods corev1.PodList
		if err := s.c.List(ctx, &pods, client.InNamespace(systemNS), client.MatchingLabels{"app.kubernetes.io/component": "manager"}); err != nil {
			return false, "", err
		}
		return len(pods.Items) == 0, fmt.Sprintf("%d manager pods", len(pods.Items)), nil
	})
	p := streamerPod(ns, "uninjected", s.streamer, podOpts{port: podPort})
	p.Labels[handoffv1.EnabledLabel] = "true"
	// What the webhook would have added: left out here, as a user relying
	// on the label would.
	p.Spec.Volumes = p.Spec.Volumes[1:]
	p.Spec.Containers[0].VolumeMounts = p.Spec.Containers[0].VolumeMounts[1:]
	p.Spec.Containers[0].Env = nil
	p.Spec.SecurityContext.SupplementalGroups = nil
	start := time.Now()
	s.createPod(t, p)
	got := s.waitPodReady(t, ns, "uninjected")
	s.timing("%s: a labelled pod with the webhook down → Ready in %v", ns, time.Since(start).Round(time.Millisecond))
	if _, injected := got.Annotations[handoffv1.InjectedAnnotation]; injected {
		t.Fatalf("pod was injected (%s) with no manager running", got.Annotations[handoffv1.InjectedAnnotation])
	}
	for _, v := range got.Spec.Volumes {
		if v.HostPath != nil {
			t.Fatalf("pod has a hostPath volume %s with no manager running", v.Name)
		}
	}
	logs := s.run(t, time.Minute, s.kubectl, "logs", "-n", ns, "uninjected")
	if !strings.Contains(logs, "handoff: unavailable, serving with fresh sockets") {
		t.Errorf("the streamer did not log that handoff is unavailable:\n%s", tail(logs, 10))
	}
}

// streamerDeployment is a pod-network Deployment of streamers whose
// image-only rollouts handoff makes in place.
func streamerDeployment(ns, image string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: streamer
  namespace: %s
  annotations: {handoff.dev/update: InPlaceIfPossible}
spec:
  replicas: %d
  selector:
    matchLabels: {app: streamer}
`, ns, replicas) + streamerTemplate(image, podPort, false)
}

// testDeploymentInPlace rolls a two-pod Deployment out with kubectl set
// image, then back with kubectl rollout undo: each time the pods stay in
// their one ReplicaSet (the replaced template is kept in another without
// pods, for undo), one Migration per pod, the same pods restarted in
// place, kubectl rollout status done, and the clients on the pod IPs keep
// every stream.
func (s *suite) testDeploymentInPlace(t *testing.T) {
	const replicas = 2
	ctx := context.Background()
	ns := s.namespace(t, "deploy-in-place")
	s.runInput(t, time.Minute, streamerDeployment(ns, s.streamer, replicas), s.kubectl, "apply", "-f", "-")
	s.run(t, 3*time.Minute, s.kubectl, "rollout", "status", "-n", ns, "deploy/streamer", "--timeout=2m")
	var pods corev1.PodList
	if err := s.c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != replicas {
		t.Fatalf("%d pods; want %d", len(pods.Items), replicas)
	}
	before := map[string]corev1.Pod{}
	var clients []*loadclient.Client
	for _, p := range pods.Items {
		s.checkInjected(t, &p, false)
		before[p.Name] = p
		addr := net.JoinHostPort(p.Status.PodIP, strconv.Itoa(podPort))
		waitServing(t, addr)
		clients = append(clients, s.startClients(t, addr, clientStreams/replicas))
	}
	rsBefore := s.replicaSets(t, ns)

	for round, step := range []struct {
		image string
		args  []string
	}{
		{s.streamerNext, []string{"set", "image", "-n", ns, "deploy/streamer", streamerName + "=" + s.streamerNext}},
		{s.streamer, []string{"rollout", "undo", "-n", ns, "deploy/streamer"}},
	} {
		image := step.image
		what := "kubectl " + strings.Join(step.args, " ")
		start := time.Now()
		s.run(t, time.Minute, s.kubectl, step.args...)
		s.run(t, 4*time.Minute, s.kubectl, "rollout", "status", "-n", ns, "deploy/streamer", "--timeout=3m")
		s.timing("%s: %s → rollout status done in %v", ns, what, time.Since(start).Round(time.Millisecond))
		// rollout status is done once every pod is at the new template;
		// the controller resumes the Deployment just after that.
		waitFor(t, "the Deployment resumed after "+what, time.Minute, func() (bool, string, error) {
			var d appsv1.Deployment
			if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &d); err != nil {
				return false, "", err
			}
			return !d.Spec.Paused && d.Annotations[handoffv1.InPlaceRolloutAnnotation] == "",
				fmt.Sprintf("paused %v, annotation %q", d.Spec.Paused, d.Annotations[handoffv1.InPlaceRolloutAnnotation]), nil
		})
		if rs := s.replicaSets(t, ns); strings.Join(rs, ",") != strings.Join(rsBefore, ",") {
			t.Fatalf("after %s the ReplicaSets with pods are %v; want the same %v", what, rs, rsBefore)
		}
		var migs handoffv1.MigrationList
		if err := s.c.List(ctx, &migs, client.InNamespace(ns), client.MatchingLabels{handoffv1.WorkloadLabel: "streamer"}); err != nil {
			t.Fatal(err)
		}
		done := 0
		for i := range migs.Items {
			m := &migs.Items[i]
			if m.Spec.Target.Image != image {
				continue
			}
			done++
			wantCompleted(t, m, clientStreams/replicas)
			s.timing("%s: round %d, pod %s: %s", ns, round+1, m.Spec.Source.Pod, m.Status.Message)
		}
		if done != replicas {
			t.Fatalf("after %s: %d Migrations to %s; want one per pod", what, done, image)
		}
		for name, old := range before {
			var p corev1.Pod
			if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
				t.Fatalf("pod %s after %s: %v", name, what, err)
			}
			if p.UID != old.UID || p.Status.PodIP != old.Status.PodIP || p.Spec.Containers[0].Image != image {
				t.Errorf("pod %s after %s: uid %s ip %s image %s; want the same pod with %s", name, what, p.UID, p.Status.PodIP, p.Spec.Containers[0].Image, image)
			}
		}
		for _, lc := range clients {
			s.checkClients(t, lc, what)
		}
	}
	for _, lc := range clients {
		s.stopClients(t, lc)
	}
}

// replicaSets lists the names of the namespace's ReplicaSets that want
// or have pods, sorted.
func (s *suite) replicaSets(t *testing.T, ns string) []string {
	t.Helper()
	var list appsv1.ReplicaSetList
	if err := s.c.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, rs := range list.Items {
		if ptr.Deref(rs.Spec.Replicas, 0) > 0 || rs.Status.Replicas > 0 {
			names = append(names, rs.Name)
		}
	}
	slices.Sort(names)
	return names
}

// testDaemonSetInPlace rolls a pod-network DaemonSet (OnDelete,
// handoff.dev/update) out with kubectl set image: its pod restarts in
// place, keeps its UID and IP, and counts as updated.
func (s *suite) testDaemonSetInPlace(t *testing.T) {
	ctx := context.Background()
	ns := s.namespace(t, "ds-in-place")
	ds := fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: streamer
  namespace: %s
  annotations: {handoff.dev/update: InPlaceOnly}
spec:
  selector:
    matchLabels: {app: streamer}
  updateStrategy: {type: OnDelete}
`, ns) + streamerTemplate(s.streamer, podPort, false)
	s.runInput(t, time.Minute, ds, s.kubectl, "apply", "-f", "-")
	var pod *corev1.Pod
	waitFor(t, "the DaemonSet's pod", 2*time.Minute, func() (bool, string, error) {
		var pods corev1.PodList
		if err := s.c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		if len(pods.Items) == 1 {
			pod = &pods.Items[0]
		}
		return pod != nil, fmt.Sprintf("%d pods", len(pods.Items)), nil
	})
	pod = s.waitPodReady(t, ns, pod.Name)
	addr := net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(podPort))
	waitServing(t, addr)
	lc := s.startClients(t, addr, clientStreams/2)
	start := time.Now()
	s.run(t, time.Minute, s.kubectl, "set", "image", "-n", ns, "ds/streamer", streamerName+"="+s.streamerNext)
	var d appsv1.DaemonSet
	waitFor(t, "the DaemonSet's pod updated in place", 3*time.Minute, func() (bool, string, error) {
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &d); err != nil {
			return false, "", err
		}
		return d.Status.ObservedGeneration == d.Generation && d.Status.UpdatedNumberScheduled == 1 && d.Status.NumberReady == 1,
			fmt.Sprintf("updated %d, ready %d", d.Status.UpdatedNumberScheduled, d.Status.NumberReady), nil
	})
	s.timing("%s: kubectl set image ds/streamer (pod network, in place) → updated in %v", ns, time.Since(start).Round(time.Millisecond))
	var now corev1.Pod
	if err := s.c.Get(ctx, client.ObjectKeyFromObject(pod), &now); err != nil {
		t.Fatalf("the pod after the rollout: %v; want the same pod", err)
	}
	if now.UID != pod.UID || now.Status.PodIP != pod.Status.PodIP || now.Spec.Containers[0].Image != s.streamerNext {
		t.Fatalf("pod uid %s ip %s image %s; want the same pod (%s, %s) with %s", now.UID, now.Status.PodIP, now.Spec.Containers[0].Image, pod.UID, pod.Status.PodIP, s.streamerNext)
	}
	var migs handoffv1.MigrationList
	if err := s.c.List(ctx, &migs, client.InNamespace(ns), client.MatchingLabels{handoffv1.WorkloadKindLabel: "DaemonSet"}); err != nil {
		t.Fatal(err)
	}
	if len(migs.Items) != 1 {
		t.Fatalf("%d Migrations; want one", len(migs.Items))
	}
	wantCompleted(t, &migs.Items[0], clientStreams/2)
	s.checkClients(t, lc, "kubectl set image ds/streamer in place")
	s.stopClients(t, lc)
}
