package integration

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// TestAgentUpgradeDuringMigrations: a new agent starts on node-u while the
// old one runs a Migration. The old agent finishes it (an upgrade never
// cuts a transaction); a Migration created meanwhile waits, saying
// WaitingForAgentHandover, and the new agent runs it once the
// applications (one of them waiting in standby) rejoined it. Every client
// keeps every byte.
func TestAgentUpgradeDuringMigrations(t *testing.T) {
	startCluster(t)
	needCgroups(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	const node = "node-u"
	if err := k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}); err != nil {
		t.Fatalf("create node %s: %v", node, err)
	}
	if err := createAgentPod(ctx, node); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	old, err := startNodeAgent(ctx, &wg, node, sock, "nodeagent-node-u-old", itestLog().WithName("old"))
	if err != nil {
		t.Fatal(err)
	}
	ns := namespace(t)
	addr1, _, dst1 := streamerPair(t, old, ns)
	_, xsrc := createPodInCgroup(t, ns, "x-old", node, true)
	_, xdst := createPodInCgroup(t, ns, "x-new", node, true)
	addr2 := freeAddr(t)
	startStreamer(t, xsrc, sock, addr2, false)
	dst2 := startStreamer(t, xdst, sock, addr2, true)
	const streams = 30
	lc1, lc2 := startClients(t, addr1, streams), startClients(t, addr2, streams)
	mark1, mark2 := lc1.Mark(), lc2.Mark()

	// The first Migration holds in the old agent, its source serving on,
	// until the test lets it go.
	release := make(chan struct{})
	held := make(chan struct{})
	setFault(t, old, "prepared", func() { close(held); <-release })
	m1 := migration(ns, "first", "old", "new", 30*time.Second)
	if err := k8s.Create(ctx, m1); err != nil {
		t.Fatal(err)
	}
	<-held

	// The new agent asks the old one to hand over, and waits.
	type started struct {
		na  *nodeAgent
		err error
	}
	succ := make(chan started, 1)
	go func() {
		na, err := startNodeAgent(ctx, &wg, node, sock, "nodeagent-node-u-new", itestLog().WithName("new"))
		succ <- started{na, err}
	}()
	waitUntil(t, "the old agent hands over", func() bool { return old.agent.HandingOver() })

	m2 := migration(ns, "second", "x-old", "x-new", 30*time.Second)
	if err := k8s.Create(ctx, m2); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second Migration waits for the handover", func() bool {
		got := &v1alpha1.Migration{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(m2), got); err != nil {
			t.Fatal(err)
		}
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionTransferred)
		return c != nil && c.Reason == v1alpha1.ReasonWaitingForAgentHandover && c.Status == metav1.ConditionUnknown
	})
	select {
	case s := <-succ:
		t.Fatalf("the new agent started while the old one ran a Migration: %v", s.err)
	default:
	}

	close(release)
	start := time.Now()
	waitFinal(t, m1, v1alpha1.PhaseCompleted, v1alpha1.ReasonTransferred)
	dst1.waitLine(t, "serving on")
	s := <-succ
	if s.err != nil {
		t.Fatalf("the new agent: %v", s.err)
	}
	tookOver := time.Since(start)
	if !old.agent.HandedOver() {
		t.Fatal("the new agent serves, and the old one says it did not hand over")
	}
	got := waitFinal(t, m2, v1alpha1.PhaseCompleted, v1alpha1.ReasonTransferred)
	dst2.waitLine(t, "serving on")
	t.Logf("the new agent served %v after the held Migration went on; the waiting Migration completed %v after that (moved %+v)",
		tookOver.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)-tookOver.Round(time.Millisecond), got.Status.Moved)
	if got.Status.Moved == nil || got.Status.Moved.Connections < streams {
		t.Errorf("the second Migration moved %+v, want at least %d connections", got.Status.Moved, streams)
	}
	for _, e := range eventsFor(t, got) {
		if e == v1alpha1.ReasonTransferFailed {
			t.Errorf("the second Migration had a TransferFailed Event")
		}
	}
	checkClients(t, lc1, mark1)
	checkClients(t, lc2, mark2)
}

// waitUntil polls cond until it holds, within bound.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval of a bounded condition wait
	}
}
