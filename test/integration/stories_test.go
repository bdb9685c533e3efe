package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
)

// streamerPair creates hostNetwork pods "old" and "new" on na's node, an
// active streamer in the first and a standby one in the second, both
// joined to na.
func streamerPair(t *testing.T, na *nodeAgent, ns string) (addr string, src, dst *proc) {
	t.Helper()
	_, srcCg := createPodInCgroup(t, ns, "old", na.node, true)
	_, dstCg := createPodInCgroup(t, ns, "new", na.node, true)
	addr = freeAddr(t)
	src = startStreamer(t, srcCg, na.socket, addr, false)
	dst = startStreamer(t, dstCg, na.socket, addr, true)
	return addr, src, dst
}

// waitScheduled waits until the controller scheduled mig.
func waitScheduled(t *testing.T, mig *v1alpha1.Migration) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for mig.Status.Phase != v1alpha1.PhaseScheduled {
		if time.Now().After(deadline) {
			t.Fatalf("not scheduled: %+v", mig.Status)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(mig), mig); err != nil {
			t.Fatal(err)
		}
	}
}

// namespace creates a namespace for one test.
func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "itest-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

func migration(ns, name, src, dst string, timeout time.Duration) *v1alpha1.Migration {
	return &v1alpha1.Migration{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.MigrationSpec{
			Source:  v1alpha1.Endpoint{Pod: src, Container: "app"},
			Target:  v1alpha1.TargetEndpoint{Endpoint: v1alpha1.Endpoint{Pod: dst, Container: "app"}},
			Timeout: &metav1.Duration{Duration: timeout},
		},
	}
}

// waitPhase waits until the Migration reaches a final phase and checks it.
func waitFinal(t *testing.T, mig *v1alpha1.Migration, want v1alpha1.Phase, reason string) *v1alpha1.Migration {
	t.Helper()
	got := &v1alpha1.Migration{}
	deadline := time.Now().Add(bound)
	for {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(mig), got); err != nil {
			t.Fatalf("get migration %s: %v", mig.Name, err)
		}
		if got.Status.Phase.Final() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration %s still %q after %v: %+v", mig.Name, got.Status.Phase, bound, got.Status)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
	ready := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady)
	if got.Status.Phase != want || ready == nil || ready.Reason != reason {
		t.Fatalf("migration %s ended %s (Ready %+v), want %s with reason %s; status %+v", mig.Name, got.Status.Phase, ready, want, reason, got.Status)
	}
	if got.Status.ObservedGeneration != got.Generation || ready.ObservedGeneration != got.Generation {
		t.Errorf("observedGeneration %d / Ready %d, want %d", got.Status.ObservedGeneration, ready.ObservedGeneration, got.Generation)
	}
	if got.Status.CompletionTime == nil || got.Status.Message == "" {
		t.Errorf("final status lacks completionTime or message: %+v", got.Status)
	}
	return got
}

// startClients opens n verifying streams to addr.
func startClients(t *testing.T, addr string, n int) *loadclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	lc, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: n, NewConnRate: 20})
	if err != nil {
		t.Fatalf("start clients: %v", err)
	}
	t.Cleanup(func() { lc.Stop() })
	return lc
}

// checkClients waits until every stream advanced past the migration and
// checks that no byte was lost, duplicated or corrupted and no stream died.
func checkClients(t *testing.T, lc *loadclient.Client, m loadclient.Mark) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := lc.WaitAdvanced(ctx, m, 1024); err != nil {
		t.Fatalf("streams did not advance after the migration: %v (%v)", err, lc.Snapshot())
	}
	st := lc.Snapshot()
	if f := st.Failures(); len(f) > 0 {
		t.Fatalf("clients saw failures: %s", strings.Join(f, "; "))
	}
	if st.Alive != st.Streams {
		t.Fatalf("%d of %d streams alive", st.Alive, st.Streams)
	}
	t.Logf("clients: %v", st)
}

func eventsFor(t *testing.T, mig *v1alpha1.Migration) []string {
	t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(context.Background(), &list, client.InNamespace(mig.Namespace)); err != nil {
		t.Fatalf("list events: %v", err)
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == mig.Name {
			out = append(out, e.Reason)
		}
	}
	return out
}

// TestHappyPath: two hostNetwork pods on node-a, clients streaming; the
// Migration completes, counts every stream, deletes the source pod, and
// no client notices anything but a pause.
func TestHappyPath(t *testing.T) {
	c := startCluster(t)
	ns := namespace(t)
	agent := c.agents["node-a"]
	addr, src, dst := streamerPair(t, agent, ns)
	const streams = 40
	lc := startClients(t, addr, streams)
	mark := lc.Mark()

	mig := migration(ns, "move", "old", "new", 30*time.Second)
	start := time.Now()
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatalf("create migration: %v", err)
	}
	got := waitFinal(t, mig, v1alpha1.PhaseCompleted, v1alpha1.ReasonTransferred)
	t.Logf("apply → Completed in %v; pause %v; moved %+v", time.Since(start), got.Status.Pause, got.Status.Moved)
	dst.waitLine(t, "serving on")
	if got.Status.Moved == nil || got.Status.Moved.Connections < streams || got.Status.Moved.Listeners != 1 {
		t.Errorf("moved %+v, want 1 listener and at least %d connections", got.Status.Moved, streams)
	}
	if got.Status.Pause == nil || got.Status.Pause.Duration <= 0 {
		t.Errorf("no pause recorded: %+v", got.Status.Pause)
	}
	if got.Status.NodeName != "node-a" || got.Labels[v1alpha1.NodeLabel] != "node-a" {
		t.Errorf("node %q, label %q, want node-a", got.Status.NodeName, got.Labels[v1alpha1.NodeLabel])
	}
	if !strings.HasPrefix(got.Status.SourceContainerID, "containerd://") || !strings.HasPrefix(got.Status.TargetContainerID, "containerd://") {
		t.Errorf("container IDs %q → %q", got.Status.SourceContainerID, got.Status.TargetContainerID)
	}
	for _, typ := range []string{v1alpha1.ConditionValidated, v1alpha1.ConditionScheduled, v1alpha1.ConditionTransferred} {
		if !meta.IsStatusConditionTrue(got.Status.Conditions, typ) {
			t.Errorf("condition %s not True: %+v", typ, got.Status.Conditions)
		}
	}
	checkClients(t, lc, mark)

	// The source pod is deleted gracefully (with no kubelet here, it stays
	// as Terminating), and the old process has let go and exited.
	deadline := time.Now().Add(bound)
	for {
		pod := &corev1.Pod{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "old"}, pod)
		if apierrors.IsNotFound(err) || (err == nil && pod.DeletionTimestamp != nil) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("source pod not deleted: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
	src.waitLine(t, "moved away")
	waitEvent(t, got, v1alpha1.ReasonSourceDeleted)
	evs := eventsFor(t, got)
	for _, want := range []string{v1alpha1.ReasonValid, v1alpha1.ReasonNodeAssigned, v1alpha1.ReasonTransferred} {
		if !contains(evs, want) {
			t.Errorf("no %s Event; events: %v", want, evs)
		}
	}
	// Once its cache shows the outcome, the agent forgets the Migration:
	// what it remembers does not grow with every Migration it ran.
	deadline = time.Now().Add(bound)
	for agent.rec.Remembered() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent still remembers %d finished Migrations", agent.rec.Remembered())
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func waitEvent(t *testing.T, mig *v1alpha1.Migration, reason string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !contains(eventsFor(t, mig), reason) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event for %s; events: %v", reason, mig.Name, eventsFor(t, mig))
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// TestValidationFailures: what CEL cannot check fails with its own reason
// and a message that says what to do.
func TestValidationFailures(t *testing.T) {
	startCluster(t)
	ns := namespace(t)
	createPod(t, ns, "host-a", "node-a", true)
	createPod(t, ns, "host-b", "node-b", true)
	createPod(t, ns, "net-1", "node-a", false)
	createPod(t, ns, "net-2", "node-a", false)
	pending := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pending"},
		Spec: corev1.PodSpec{NodeName: "node-a", HostNetwork: true, Containers: []corev1.Container{{Name: "app", Image: "x:v1"}}}}
	if err := k8s.Create(context.Background(), pending); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, src, srcC, dst string
		timeout              time.Duration
		reason, msg          string
	}{
		{"missing-source", "nope", "app", "host-a", 30 * time.Second, v1alpha1.ReasonSourcePodNotFound, "does not exist"},
		{"missing-target", "host-a", "app", "nope", 30 * time.Second, v1alpha1.ReasonTargetPodNotFound, "does not exist"},
		{"different-nodes", "host-a", "app", "host-b", 30 * time.Second, v1alpha1.ReasonDifferentNodes, "schedule the target on node-a"},
		{"netns", "net-1", "app", "net-2", 30 * time.Second, v1alpha1.ReasonNetworkNamespaceNotShared, "CNI has already taken away"},
		{"container", "host-a", "sidecar", "pending", 30 * time.Second, v1alpha1.ReasonContainerNotFound, `no container "sidecar"`},
		{"not-running", "host-a", "app", "pending", 2 * time.Second, v1alpha1.ReasonPodNotRunning, "not ready within the timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mig := migration(ns, tc.name, tc.src, tc.dst, tc.timeout)
			mig.Spec.Source.Container = tc.srcC
			if err := k8s.Create(context.Background(), mig); err != nil {
				t.Fatalf("create: %v", err)
			}
			got := waitFinal(t, mig, v1alpha1.PhaseFailed, tc.reason)
			if !strings.Contains(got.Status.Message, tc.msg) {
				t.Errorf("message %q does not say %q", got.Status.Message, tc.msg)
			}
			if got.Labels[v1alpha1.NodeLabel] != "" {
				t.Errorf("an invalid migration was scheduled to %q", got.Labels[v1alpha1.NodeLabel])
			}
			waitEvent(t, got, tc.reason)
		})
	}
}

// TestTargetCrash: the target is killed in the middle of the transfer; the
// Migration fails with TargetLost and the source keeps serving every
// client without losing a byte.
func TestTargetCrash(t *testing.T) {
	c := startCluster(t)
	ns := namespace(t)
	agent := c.agents["node-a"]
	addr, src, dst := streamerPair(t, agent, ns)
	lc := startClients(t, addr, 20)
	// Kill the target when the first batch has been relayed to it.
	killed := make(chan struct{})
	setFault(t, agent, "relayed-batch", func() {
		_ = dst.cmd.Process.Signal(syscall.SIGKILL)
		close(killed)
	})
	mig := migration(ns, "crash", "old", "new", 30*time.Second)
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, mig, v1alpha1.PhaseFailed, v1alpha1.ReasonTargetLost)
	<-killed
	if !strings.Contains(got.Status.Message, "source resumed") {
		t.Errorf("message %q does not say the source resumed", got.Status.Message)
	}
	mark := lc.Mark()
	checkClients(t, lc, mark)
	if pod := (&corev1.Pod{}); k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "old"}, pod) != nil || pod.DeletionTimestamp != nil {
		t.Errorf("the source pod was deleted after a failed migration")
	}
	select {
	case err := <-src.done:
		t.Fatalf("the source exited after a failed migration: %v", err)
	default:
	}
}

// TestDeadlineWithoutAgent: node-c has no agent; the controller fails the
// Migration at its deadline and says the agent never reported.
func TestDeadlineWithoutAgent(t *testing.T) {
	startCluster(t)
	ns := namespace(t)
	createPod(t, ns, "a", "node-c", true)
	createPod(t, ns, "b", "node-c", true)
	mig := migration(ns, "orphan", "a", "b", 2*time.Second)
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, mig, v1alpha1.PhaseFailed, v1alpha1.ReasonDeadlineExceeded)
	if !strings.Contains(got.Status.Message, "never reported") || !strings.Contains(got.Status.Message, "node-c") {
		t.Errorf("message %q does not name the silent agent's node", got.Status.Message)
	}
	if meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionTransferred) != nil {
		t.Errorf("some agent reported on a node-c migration: %+v", got.Status.Conditions)
	}
}

// TestCELRejections: what one object can check is refused by the API
// server with the rule's message.
func TestCELRejections(t *testing.T) {
	needAPIServer(t)
	ns := namespace(t)
	cases := []struct {
		name string
		edit func(*v1alpha1.Migration)
		msg  string
	}{
		{"timeout-zero", func(m *v1alpha1.Migration) { m.Spec.Timeout = &metav1.Duration{Duration: 0} }, "timeout must be between 1s and 1h"},
		{"timeout-long", func(m *v1alpha1.Migration) { m.Spec.Timeout = &metav1.Duration{Duration: 2 * time.Hour} }, "timeout must be between 1s and 1h"},
		{"same-container", func(m *v1alpha1.Migration) { m.Spec.Target.Pod = m.Spec.Source.Pod }, "set target.image"},
		{"image-other-pod", func(m *v1alpha1.Migration) { m.Spec.Target.Image = "x:v2" }, "must name the same pod and container"},
		{"delete-same-pod", func(m *v1alpha1.Migration) {
			m.Spec.Target.Pod, m.Spec.Target.Container, m.Spec.SourcePolicy = m.Spec.Source.Pod, "other", v1alpha1.SourcePolicyDelete
		}, "would delete the target too"},
		{"no-source", func(m *v1alpha1.Migration) { m.Spec.Source = v1alpha1.Endpoint{} }, "spec.source"},
		{"bad-move", func(m *v1alpha1.Migration) { m.Spec.Move = []v1alpha1.MoveKind{"Everything"} }, "Unsupported value"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mig := migration(ns, tc.name, "a", "b", 10*time.Second)
			tc.edit(mig)
			err := k8s.Create(context.Background(), mig)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("create: %v, want a refusal saying %q", err, tc.msg)
			}
		})
	}
	ok := migration(ns, "valid", "a", "b", 10*time.Second)
	if err := k8s.Create(context.Background(), ok); err != nil {
		t.Fatalf("a valid migration was refused: %v", err)
	}
}

// TestImmutableOnceScheduled: once the controller scheduled a Migration,
// its spec cannot change.
func TestImmutableOnceScheduled(t *testing.T) {
	startCluster(t)
	ns := namespace(t)
	createPod(t, ns, "a", "node-c", true)
	createPod(t, ns, "b", "node-c", true)
	mig := migration(ns, "fixed", "a", "b", 30*time.Second)
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatal(err)
	}
	waitScheduled(t, mig)
	mig.Spec.Timeout = &metav1.Duration{Duration: 40 * time.Second}
	err := k8s.Update(context.Background(), mig)
	if err == nil || !strings.Contains(err.Error(), "spec is immutable once the migration is scheduled") {
		t.Fatalf("update of a scheduled spec: %v, want a refusal", err)
	}
}

// TestAgentsOnlySeeTheirNode: each agent's cache holds only its node's
// Migrations, and a Migration on node-b completes through node-b's agent
// while node-a's never touches it.
func TestAgentsOnlySeeTheirNode(t *testing.T) {
	c := startCluster(t)
	ns := namespace(t)
	addr, _, _ := streamerPair(t, c.agents["node-b"], ns)
	lc := startClients(t, addr, 10)
	mark := lc.Mark()
	mig := migration(ns, "on-b", "old", "new", 30*time.Second)
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, mig, v1alpha1.PhaseCompleted, v1alpha1.ReasonTransferred)
	checkClients(t, lc, mark)
	if got.Status.NodeName != "node-b" {
		t.Fatalf("node %q, want node-b", got.Status.NodeName)
	}
	for node, na := range c.agents {
		var list v1alpha1.MigrationList
		if err := na.mgr.GetCache().List(context.Background(), &list); err != nil {
			t.Fatalf("list %s's cache: %v", node, err)
		}
		for _, m := range list.Items {
			if m.Labels[v1alpha1.NodeLabel] != node {
				t.Errorf("the agent of %s caches migration %s/%s of node %q", node, m.Namespace, m.Name, m.Labels[v1alpha1.NodeLabel])
			}
		}
		if node == "node-a" && containsMig(list, got) {
			t.Errorf("node-a's agent sees node-b's migration")
		}
		if node == "node-b" && !containsMig(list, got) {
			t.Errorf("node-b's agent does not see its own migration")
		}
	}
	// The managed fields show one writer per status part.
	managers := map[string]bool{}
	for _, f := range got.ManagedFields {
		if f.Subresource == "status" {
			managers[f.Manager] = true
		}
	}
	if !managers[v1alpha1.ControllerFieldManager] || !managers[v1alpha1.AgentFieldManager] || len(managers) != 2 {
		t.Errorf("status written by %v, want exactly %s and %s", managers, v1alpha1.ControllerFieldManager, v1alpha1.AgentFieldManager)
	}
}

func containsMig(list v1alpha1.MigrationList, m *v1alpha1.Migration) bool {
	for _, x := range list.Items {
		if x.UID == m.UID {
			return true
		}
	}
	return false
}

// TestInPlaceImageUpdate: target.image restarts one container with a new
// image while the agent holds its sockets; the restarted process claims
// them and the clients, which connected to the pod, keep every byte. The
// test plays kubelet: it waits for the agent's image patch, lets the old
// process exit, and starts the new one in a new container cgroup of the
// same pod.
func TestInPlaceImageUpdate(t *testing.T) {
	c := startCluster(t)
	ns := namespace(t)
	agent := c.agents["node-a"]
	pod, cg := createPodInCgroup(t, ns, "solo", "node-a", false)
	oldID := pod.Status.ContainerStatuses[0].ContainerID
	addr := freeAddr(t)
	src := startStreamer(t, cg, agent.socket, addr, false)
	const streams = 20
	lc := startClients(t, addr, streams)
	mark := lc.Mark()

	mig := migration(ns, "upgrade", "solo", "solo", 30*time.Second)
	mig.Spec.Target.Image = "handoff/streamer:v2"
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatalf("create migration: %v", err)
	}
	// kubelet sees the new image only once the sockets are safe.
	deadline := time.Now().Add(bound)
	for {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), pod); err != nil {
			t.Fatal(err)
		}
		if pod.Spec.Containers[0].Image == mig.Spec.Target.Image {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never patched the image: %+v", pod.Spec.Containers)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a bounded condition wait
	}
	src.waitLine(t, "moved away")
	if err := <-src.done; err != nil {
		t.Fatalf("the old process did not exit cleanly after it let go: %v", err)
	}
	src.done <- nil // for its cleanup
	dir, id := containerCgroup(t, needCgroups(t), string(pod.UID))
	newID := "containerd://" + id
	pod.Status.ContainerStatuses[0].ContainerID = newID
	pod.Status.ContainerStatuses[0].Image = mig.Spec.Target.Image
	pod.Status.ContainerStatuses[0].RestartCount = 1
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	dst := startStreamer(t, dir, agent.socket, addr, false)
	_ = dst

	got := waitFinal(t, mig, v1alpha1.PhaseCompleted, v1alpha1.ReasonTransferred)
	t.Logf("in-place update: pause %v (restart included), moved %+v", got.Status.Pause, got.Status.Moved)
	if got.Status.SourceContainerID != oldID || got.Status.TargetContainerID != newID {
		t.Errorf("container IDs %s → %s, want %s → %s", got.Status.SourceContainerID, got.Status.TargetContainerID, oldID, newID)
	}
	if got.Status.Moved == nil || got.Status.Moved.Connections < streams || got.Status.Moved.Listeners != 1 {
		t.Errorf("moved %+v, want 1 listener and at least %d connections", got.Status.Moved, streams)
	}
	checkClients(t, lc, mark)
	waitEvent(t, got, v1alpha1.ReasonSourceKept)
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), pod); err != nil || pod.DeletionTimestamp != nil {
		t.Errorf("the pod was deleted after an in-place update: %v", err)
	}
}

// TestNodeDeleted: the node of a scheduled Migration is deleted; the
// controller fails it at once, without waiting for the deadline.
func TestNodeDeleted(t *testing.T) {
	startCluster(t)
	ns := namespace(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-gone-" + ns}}
	if err := k8s.Create(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	if err := createAgentPod(context.Background(), node.Name); err != nil {
		t.Fatal(err)
	}
	createPod(t, ns, "a", node.Name, true)
	createPod(t, ns, "b", node.Name, true)
	mig := migration(ns, "stranded", "a", "b", time.Hour)
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatal(err)
	}
	waitScheduled(t, mig)
	if err := k8s.Delete(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, mig, v1alpha1.PhaseFailed, v1alpha1.ReasonNodeNotFound)
	if !strings.Contains(got.Status.Message, node.Name) {
		t.Errorf("message %q does not name the node", got.Status.Message)
	}
}

// TestAgentUnavailable: no agent pod runs on the Migration's node; the
// controller fails it with AgentUnavailable after the grace, long before
// its deadline.
func TestAgentUnavailable(t *testing.T) {
	startCluster(t)
	ns := namespace(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-bare-" + ns}}
	if err := k8s.Create(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	createPod(t, ns, "a", node.Name, true)
	createPod(t, ns, "b", node.Name, true)
	mig := migration(ns, "unattended", "a", "b", time.Hour)
	start := time.Now()
	if err := k8s.Create(context.Background(), mig); err != nil {
		t.Fatal(err)
	}
	got := waitFinal(t, mig, v1alpha1.PhaseFailed, v1alpha1.ReasonAgentUnavailable)
	if !strings.Contains(got.Status.Message, node.Name) || !strings.Contains(got.Status.Message, "nothing was moved") {
		t.Errorf("message %q does not name the node or say nothing moved", got.Status.Message)
	}
	t.Logf("failed after %v (grace 2s, timeout 1h)", time.Since(start))
}
