package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	handoffv1 "github.com/handoff-dev/handoff/api/v1alpha1"
)

// inPlaceRepeats is how many in-place updates testInPlaceRepeated makes.
const inPlaceRepeats = 10

// testInPlaceRepeated updates one pod's image in place ten times in a row,
// cycling through four tags, under live clients: each image comes back
// while kubelet still remembers starting it, which without the agent's
// wait put the restart into kubelet's back-off ("back-off 10s restarting
// failed container") while the agent held every socket. Every update must
// complete with every stream kept, no BackOff Event, and a pause far from
// the back-off's 10 s.
func (s *suite) testInPlaceRepeated(t *testing.T) {
	more := strings.Fields(os.Getenv("HANDOFF_E2E_STREAMER_MORE"))
	if len(more) < 2 {
		t.Fatal("HANDOFF_E2E_STREAMER_MORE must name two more tags of the streamer image (hack/e2e-cluster.sh sets it)")
	}
	tags := []string{s.streamerNext, more[0], more[1], s.streamer}
	ctx := context.Background()
	ns := s.namespace(t, "in-place-repeated")
	s.createPod(t, streamerPod(ns, "streamer", s.streamer, podOpts{port: podPort, restartAlways: true}))
	pod := s.waitPodReady(t, ns, "streamer")
	addr := net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(podPort))
	waitServing(t, addr)
	lc := s.startClients(t, addr, clientStreams)

	var pauses []string
	var worst time.Duration
	start := time.Now()
	for i := range inPlaceRepeats {
		image := tags[i%len(tags)]
		lc.ResetStall()
		name := "update-" + strconv.Itoa(i+1)
		m := s.migrate(t, ns, name, fmt.Sprintf(`
spec:
  source: {pod: streamer, container: %s}
  target: {pod: streamer, container: %s, image: %q}
  timeout: 3m`, streamerName, streamerName, image))
		wantCompleted(t, m, clientStreams)
		pauses = append(pauses, m.Status.Pause.Duration.Round(time.Millisecond).String())
		worst = max(worst, m.Status.Pause.Duration)
		s.waitPodReady(t, ns, "streamer")
		s.checkClients(t, lc, name)
	}
	s.timing("%s: %d in-place updates in %v, pauses %s", ns, inPlaceRepeats, time.Since(start).Round(time.Millisecond), strings.Join(pauses, " "))

	var after corev1.Pod
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "streamer"}, &after); err != nil {
		t.Fatal(err)
	}
	if after.UID != pod.UID || after.Status.PodIP != pod.Status.PodIP {
		t.Errorf("the pod is now uid %s ip %s; want the same pod (uid %s, ip %s)", after.UID, after.Status.PodIP, pod.UID, pod.Status.PodIP)
	}
	if got := containerStatus(t, &after).RestartCount; got != inPlaceRepeats {
		t.Errorf("the container restarted %d times; want exactly %d", got, inPlaceRepeats)
	}
	var evs eventsv1.EventList
	if err := s.c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	waited := 0
	for _, e := range evs.Items {
		switch e.Reason {
		case "BackOff":
			t.Errorf("kubelet backed off: %s", e.Note)
		case handoffv1.ReasonWaitingForRestartBackoff:
			waited++
		}
	}
	// Images come back within kubelet's memory from the fifth update
	// on: if the agent never had to wait, this test did not test it.
	if waited == 0 {
		t.Errorf("no Migration waited for kubelet's restart back-off; the test did not repeat images soon enough")
	}
	// A back-off is at least 10 s; the pause of a restart that avoids it is
	// kubelet stopping and starting the container.
	if worst >= 5*time.Second {
		t.Errorf("the longest pause was %v; want far less than kubelet's 10 s back-off", worst)
	}
	t.Logf("%d updates, %d waited for kubelet's back-off first; pauses %s", inPlaceRepeats, waited, strings.Join(pauses, " "))
	s.stopClients(t, lc)
}
