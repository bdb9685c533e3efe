package nodeagent_test

import (
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
)

// TestStopClosesEveryPeer: when Serve's context ends, the agent closes
// every peer, administrators included, and returns; it does not wait for
// an idle administrator to hang up (a handoffctl left open would
// otherwise keep a stopping agent alive until it is killed).
func TestStopClosesEveryPeer(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	base := fdCount(t)
	app, _ := join(t, at, "svc", false)
	ac := adminDial(t, at)
	if _, err := ac.Sessions(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		at.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(bound):
		ac.Close() // lets Serve return, so the test can end
		<-stopped
		t.Fatalf("Serve did not return within %v while an administrator was connected", bound)
	}
	expectClosed(t, app)
	if _, err := ac.Sessions(); err == nil {
		t.Fatal("the administrator session still answers after the agent stopped")
	}
	app.Close()
	ac.Close()
	waitFDs(t, base-1, "after the agent stopped and its peers hung up") // the listener is gone too
}
