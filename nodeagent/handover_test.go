package nodeagent_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// storedApp runs a testapp with one client, stores its sockets and waits
// until it exited: the store then holds one listener and one connection
// for name.
func storedApp(t *testing.T, at *agentT, name string) *client {
	t.Helper()
	src := startTestapp(t, at, name, nil)
	c := dialClient(t, src.tcp, 7)
	c.request(t)
	c.reply(t, src.pid, 1)
	storeOK(t, at, src.session, time.Minute, 1)
	src.line("EXIT ok")
	src.kill()
	expectStored(t, at, name, 1)
	return c
}

// adminHello opens an administrator session by hand, as a successor does.
func adminHello(t *testing.T, at *agentT) *wire.Conn {
	t.Helper()
	c := dialRaw(t, at)
	send(t, c, wire.TypeHello, 0, wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleAdmin, Name: "successor"}.Marshal())
	var w wire.Welcome
	if err := w.Unmarshal(recvType(t, c, wire.TypeWelcome).Body); err != nil {
		t.Fatal(err)
	}
	c.SetVersion(uint8(w.Version))
	return c
}

// TestHandoverRefusedFormat: an agent asked for a handover format it does
// not write refuses with a reason, and serves on with its store.
func TestHandoverRefusedFormat(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	storedApp(t, at, "svc")
	ac := adminDial(t, at)
	defer ac.Close()
	_, err := ac.Do(admin.Request{Op: admin.OpHandover, HandoverMin: 99, HandoverMax: 99}, nil)
	if err == nil || !strings.Contains(err.Error(), "no common handover format") {
		t.Fatalf("handover of format 99: %v, want a refusal naming the formats", err)
	}
	expectStored(t, at, "svc", 1)
	select {
	case err := <-at.done:
		t.Fatalf("the agent stopped after refusing a handover: %v", err)
	default:
	}
}

// TestHandoverSuccessorAborts: a successor that cannot take what it is
// sent aborts after receiving part of it; the old agent takes its store
// back and serves on, and the next process claims the sockets from it.
func TestHandoverSuccessorAborts(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	base := fdCount(t)
	c1 := storedApp(t, at, "svc")

	s := adminHello(t, at)
	req, _ := json.Marshal(admin.Request{Op: admin.OpHandover, HandoverMin: 1, HandoverMax: 1})
	send(t, s, wire.TypeRequest, 0, req)
	m := recvType(t, s, wire.TypeHandover)
	var h wire.Handover
	if err := h.Unmarshal(m.Body); err != nil || len(m.FDs) != 1 || h.Entries != 1 || h.FDs != 2 || h.Socket != at.socket {
		t.Fatalf("handover %+v (%v) with %d descriptors, want 1 entry of 2 descriptors for %s and the listener", h, err, len(m.FDs), at.socket)
	}
	m.CloseFDs()
	m = recvType(t, s, wire.TypeHandoverEntry)
	var e wire.HandoverEntry
	if err := e.Unmarshal(m.Body); err != nil || e.Name != "svc" || e.Batches != 1 || e.Sum.Conns != 1 || e.HoldMS == 0 || e.HoldMS > 60_000 {
		t.Fatalf("entry %+v: %v", e, err)
	}
	b := recvType(t, s, wire.TypeBatch)
	b.CloseFDs()
	send(t, s, wire.TypeAbort, 0, wire.Failure{Code: wire.CodeImport, Reason: "test: no room"}.Marshal())
	at.waitLog(t, "handover failed; serving on with everything this agent held")
	expectStored(t, at, "svc", 1)
	s.Close()
	// The stored listener and connection, and the test's client.
	waitFDs(t, base+3, "after the aborted handover")

	// The store is claimable as before.
	dst := startTestapp(t, at, "svc", nil)
	if dst.imported != 1 {
		t.Fatalf("the next process imported %d connections, want 1", dst.imported)
	}
	c1.request(t)
	c1.reply(t, dst.pid, 2)
}

// TestHandoverInProcess: a second agent on the same socket takes the
// first one's listener and store; the first one's Serve returns, the
// socket stays, and the next process claims from the second.
func TestHandoverInProcess(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	c1 := storedApp(t, at, "svc")

	succ := startAgentT(t, nodeagent.Config{Socket: at.socket})
	select {
	case err := <-at.done:
		if err != nil {
			t.Fatalf("old agent's Serve: %v", err)
		}
		at.cancel = nil
	case <-time.After(bound):
		t.Fatal("the old agent did not stop after handing over")
	}
	at.waitLog(t, "handed over to the successor; stopping", "entries", 1, "descriptors", 2)
	expectStored(t, succ, "svc", 1)
	dst := startTestapp(t, succ, "svc", nil)
	if dst.imported != 1 {
		t.Fatalf("the next process imported %d connections from the successor, want 1", dst.imported)
	}
	c1.request(t)
	c1.reply(t, dst.pid, 2)
}

// TestHandoverTakenTooLate: a successor that sends Taken only after the
// old agent stopped waiting for it gets an error for it (the old agent
// shut the session before its last read), and the old agent serves on
// with its store: Taken and the old agent's decision cannot cross.
func TestHandoverTakenTooLate(t *testing.T) {
	defer nodeagent.SetHandoverTakenWait(200 * time.Millisecond)()
	at := startAgentT(t, nodeagent.Config{})
	c1 := storedApp(t, at, "svc")

	s := adminHello(t, at)
	req, _ := json.Marshal(admin.Request{Op: admin.OpHandover, HandoverMin: 1, HandoverMax: 1})
	send(t, s, wire.TypeRequest, 0, req)
	for _, typ := range []wire.Type{wire.TypeHandover, wire.TypeHandoverEntry, wire.TypeBatch} {
		m := recvType(t, s, typ)
		m.CloseFDs()
	}
	at.waitLog(t, "handover failed; serving on with everything this agent held", "error", "did not take the handover")
	if err := s.Send(wire.Msg{Header: wire.Header{Type: wire.TypeTaken}, Body: wire.Taken{Entries: 1, FDs: 2}.Marshal()}); err == nil {
		t.Fatal("a Taken sent after the old agent gave up was accepted")
	}
	expectStored(t, at, "svc", 1)
	dst := startTestapp(t, at, "svc", nil)
	if dst.imported != 1 {
		t.Fatalf("the next process imported %d connections, want 1", dst.imported)
	}
	c1.request(t)
	c1.reply(t, dst.pid, 2)
}
