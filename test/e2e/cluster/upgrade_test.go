package cluster

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	handoffv1 "github.com/handoff-dev/handoff/api/v1alpha1"
)

// upgradeWarmup is how long the in-place pod's streamer warms up after it
// listens (its new process: after it took the sockets from the agent, and
// before it says Ready). The agent's delivery transaction runs that long,
// so the agent upgrade begins while the agent still holds the restart.
const upgradeWarmup = 20 * time.Second

// agentPods lists the node agent's pods, oldest first.
func (s *suite) agentPods(t *testing.T) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := s.c.List(context.Background(), &pods, client.InNamespace(systemNS),
		client.MatchingLabels{"app.kubernetes.io/instance": release, "app.kubernetes.io/component": "nodeagent"}); err != nil {
		t.Fatalf("list agent pods: %v", err)
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
	return pods.Items
}

// agentsReplaced waits until every agent pod is a new one (none of was),
// ready and not being deleted, and returns them.
func (s *suite) agentsReplaced(t *testing.T, was []corev1.Pod, image string) []corev1.Pod {
	t.Helper()
	old := map[types.UID]bool{}
	for _, p := range was {
		old[p.UID] = true
	}
	var now []corev1.Pod
	waitFor(t, "every agent pod replaced and ready", 3*time.Minute, func() (bool, string, error) {
		now = s.agentPods(t)
		var state []string
		done := len(now) == len(was)
		for _, p := range now {
			ready := podCondition(&p, corev1.PodReady)
			ok := !old[p.UID] && p.DeletionTimestamp == nil && ready != nil && ready.Status == corev1.ConditionTrue
			if image != "" && (len(p.Spec.Containers) == 0 || p.Spec.Containers[0].Image != image) {
				ok = false
			}
			done = done && ok
			state = append(state, fmt.Sprintf("%s new=%v ready=%v", p.Name, !old[p.UID], ok))
		}
		return done, strings.Join(state, ", "), nil
	})
	return now
}

// podLogs is the current log of a pod's container.
func (s *suite) podLogs(t *testing.T, ns, pod, container string) string {
	t.Helper()
	return s.run(t, time.Minute, s.kubectl, "logs", "-n", ns, pod, "-c", container)
}

// rejoinedRE is the SDK's log line when it joined a new agent session.
var rejoinedRE = regexp.MustCompile(`joined the agent again as session \d+, (\S+) after losing it`)

// rejoinTime is the last time a pod's streamer took to join the agent
// again after losing it, from its log; zero if it never had to.
func (s *suite) rejoinTime(t *testing.T, ns, pod string) time.Duration {
	t.Helper()
	var d time.Duration
	for _, m := range rejoinedRE.FindAllStringSubmatch(s.podLogs(t, ns, pod, streamerName), -1) {
		v, err := time.ParseDuration(strings.TrimSuffix(m[1], ";"))
		if err != nil {
			t.Fatalf("pod %s: bad rejoin time %q: %v", pod, m[1], err)
		}
		d = v
	}
	return d
}

// hopper moves a hostNetwork streamer from pod to pod on one port, each
// time to a new standby pod: Migrations back and forth under load.
type hopper struct {
	s        *suite
	ns       string
	port     int
	from, to string
	n        int
	outcomes []string
}

// hop runs one Migration from the serving pod to the standby one and
// prepares the next standby pod. A Migration may fail, with a reason; the
// source then serves on, and the standby pod is replaced.
func (h *hopper) hop(t *testing.T) *handoffv1.Migration {
	t.Helper()
	s := h.s
	name := h.from + "-to-" + h.to
	m := s.migrate(t, h.ns, name, fmt.Sprintf(`
spec:
  source: {pod: %s, container: %s}
  target: {pod: %s, container: %s}
  timeout: 2m`, h.from, streamerName, h.to, streamerName))
	ready := meta.FindStatusCondition(m.Status.Conditions, handoffv1.ConditionReady)
	if ready == nil || ready.Reason == "" {
		t.Fatalf("migration %s ended %s without a reason: %+v", name, m.Status.Phase, m.Status)
	}
	h.outcomes = append(h.outcomes, fmt.Sprintf("%s %s (%s)", name, m.Status.Phase, ready.Reason))
	switch m.Status.Phase {
	case handoffv1.PhaseCompleted:
		wantCompleted(t, m, clientStreams)
		s.waitPodReady(t, h.ns, h.to)
		s.waitPodGone(t, h.ns, h.from)
		h.from = h.to
	default:
		t.Logf("migration %s failed (%s): %s; the source serves on", name, ready.Reason, ready.Message)
		if err := s.c.Delete(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: h.to}}); client.IgnoreNotFound(err) != nil {
			t.Fatal(err)
		}
		s.waitPodGone(t, h.ns, h.to)
	}
	h.n++
	h.to = "hop-" + strconv.Itoa(h.n)
	s.createPod(t, streamerPod(h.ns, h.to, s.streamer, podOpts{hostNetwork: true, port: h.port, standby: true}))
	s.waitPodRunning(t, h.ns, h.to)
	return m
}

// testAgentUpgrade rolls the agent DaemonSet to a second image tag with
// helm upgrade (maxSurge 1: the new agent pod starts beside the old one,
// which hands over its socket and store) while (1) the agent holds an
// in-place restart (its new process took the sockets and warms up) and
// (2) Migrations move a streamer back and forth under load. Every
// Migration ends Completed or Failed with a reason; the in-place restart
// completes; no client loses a byte; no streamer restarts; afterwards a
// Migration on the node completes through the new agent.
func (s *suite) testAgentUpgrade(t *testing.T) {
	ctx := context.Background()
	ns := s.namespace(t, "agent-upgrade")
	s.createPod(t, streamerPod(ns, "inplace", s.streamer, podOpts{port: podPort, restartAlways: true, warmup: upgradeWarmup}))
	port, hopAddr, _ := s.hostPair(t, ns, "hop-0", "hop-1", podOpts{})
	ip := s.waitPodReady(t, ns, "inplace")
	ipAddr := net.JoinHostPort(ip.Status.PodIP, strconv.Itoa(podPort))
	waitServing(t, ipAddr)
	ipClients := s.startClients(t, ipAddr, clientStreams)
	hopClients := s.startClients(t, hopAddr, clientStreams)
	restarts := containerStatus(t, ip).RestartCount
	before := s.agentPods(t)
	image := s.imageRepo + ":" + s.imageNextTag

	// (1) The in-place restart, up to the point where the agent holds it.
	start := time.Now()
	s.apply(t, ns, "in-place", fmt.Sprintf(`
spec:
  source: {pod: inplace, container: %s}
  target: {pod: inplace, container: %s, image: %q}
  timeout: 3m`, streamerName, streamerName, s.streamerNext))
	waitFor(t, "the agent to hold the in-place restart's sockets", 2*time.Minute, func() (bool, string, error) {
		m, err := s.getMigration(ns, "in-place")
		if err != nil {
			return false, "", err
		}
		if m.Status.Phase.Final() {
			return false, "", fmt.Errorf("the in-place restart ended %s before the upgrade began: %s", m.Status.Phase, m.Status.Message)
		}
		c := meta.FindStatusCondition(m.Status.Conditions, handoffv1.ConditionTransferred)
		return c != nil && c.Reason == handoffv1.ReasonTransferring, string(m.Status.Phase), nil
	})

	upStart := time.Now()
	upgraded := make(chan error, 1)
	go func() {
		out, err := command(8*time.Minute, "", s.helm, "upgrade", release, s.chart, "--namespace", systemNS, "--reuse-values",
			"--set", "image.tag="+s.imageNextTag, "--wait", "--timeout", "6m")
		if err != nil {
			err = fmt.Errorf("helm upgrade to %s: %w\n%s", s.imageNextTag, err, tail(out, 20))
		}
		upgraded <- err
	}()

	// (2) Migrations back and forth until the upgrade is done, and one
	// more through the new agent, which must complete.
	h := &hopper{s: s, ns: ns, port: port, from: "hop-0", to: "hop-1", n: 1}
	upgradeTook := time.Duration(0)
	for {
		if upgradeTook == 0 {
			select {
			case err := <-upgraded:
				if err != nil {
					t.Fatal(err)
				}
				upgradeTook = time.Since(upStart)
			default:
			}
		}
		after := upgradeTook != 0
		hopClients.ResetStall()
		m := h.hop(t)
		s.checkClients(t, hopClients, m.Name)
		if after {
			if m.Status.Phase != handoffv1.PhaseCompleted {
				t.Fatalf("migration %s after the agent upgrade: %s: %s", m.Name, m.Status.Phase, m.Status.Message)
			}
			break
		}
	}
	t.Logf("migrations during and after the upgrade: %s", strings.Join(h.outcomes, "; "))

	// The in-place restart completed, under both agents.
	m := s.waitMigration(t, ns, "in-place", start, "kubectl apply")
	wantCompleted(t, m, clientStreams)
	s.waitPodReady(t, ns, "inplace")
	s.checkClients(t, ipClients, "in-place restart during the agent upgrade")

	now := s.agentsReplaced(t, before, image)
	logs := s.podLogs(t, systemNS, now[0].Name, "nodeagent")
	if !strings.Contains(logs, "took over from the old agent") {
		t.Fatalf("the new agent %s did not take over from the old one; its log:\n%s", now[0].Name, tail(logs, 30))
	}
	// The old agent told it what it waited for: the in-place restart's
	// delivery, whose new process warms up for upgradeWarmup.
	if !strings.Contains(logs, "the old agent prepares the handover") {
		t.Errorf("the handover did not wait for the in-place restart (the new agent's log has no progress from the old one):\n%s", tail(logs, 30))
	}

	var after corev1.Pod
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "inplace"}, &after); err != nil {
		t.Fatal(err)
	}
	if got := containerStatus(t, &after).RestartCount; got != restarts+1 {
		t.Errorf("the in-place pod's container restarted %d times; want %d (the in-place restart only)", got, restarts+1)
	}
	var current corev1.Pod
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: h.from}, &current); err != nil {
		t.Fatal(err)
	}
	if got := containerStatus(t, &current).RestartCount; got != 0 {
		t.Errorf("streamer pod %s restarted %d times; want none", h.from, got)
	}
	rejoin := max(s.rejoinTime(t, ns, "inplace"), s.rejoinTime(t, ns, h.from))
	s.timing("%s: helm upgrade of the agent (maxSurge) %v, its handover waiting for the in-place restart; streamers rejoined the new agent within %v of losing the old; migrations: %s",
		ns, upgradeTook.Round(time.Millisecond), rejoin, strings.Join(h.outcomes, "; "))
	s.stopClients(t, ipClients)
	s.stopClients(t, hopClients)
}

// testAgentPodDeleted deletes the agent's pod (a crash, as Kubernetes sees
// it): the DaemonSet starts a new one, the streamers join it by
// themselves, and a Migration then completes without restarting them.
func (s *suite) testAgentPodDeleted(t *testing.T) {
	ctx := context.Background()
	ns := s.namespace(t, "agent-deleted")
	port, addr, _ := s.hostPair(t, ns, "hop-0", "hop-1", podOpts{})
	lc := s.startClients(t, addr, clientStreams)
	before := s.agentPods(t)
	start := time.Now()
	for _, p := range before {
		if err := s.c.Delete(ctx, &p); err != nil {
			t.Fatalf("delete agent pod %s: %v", p.Name, err)
		}
	}
	s.agentsReplaced(t, before, "")
	ready := time.Since(start)
	h := &hopper{s: s, ns: ns, port: port, from: "hop-0", to: "hop-1", n: 1}
	lc.ResetStall()
	m := h.hop(t)
	if m.Status.Phase != handoffv1.PhaseCompleted {
		t.Fatalf("migration %s after the agent pod was deleted: %s: %s", m.Name, m.Status.Phase, m.Status.Message)
	}
	s.checkClients(t, lc, m.Name)
	// hop-0 moved away: hop-1 (rejoined in standby) is the one to ask.
	rejoin := s.rejoinTime(t, ns, "hop-1")
	if rejoin == 0 {
		t.Errorf("streamer hop-1 never logged that it joined the new agent")
	}
	s.timing("%s: agent pod deleted → new agent ready %v; the standby streamer rejoined it within %v of losing the old; migration after it %s in %v",
		ns, ready.Round(time.Millisecond), rejoin, m.Status.Phase, time.Since(start).Round(time.Millisecond))
	s.stopClients(t, lc)
}
