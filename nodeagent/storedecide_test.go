package nodeagent_test

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/wire"
)

// TestStoreDeadlineAfterReady: the agent's deadline passes after it told
// the source the store is ready. The agent asks the source to abort, on
// its session and on the pair, but the source may have let go already:
// what it says on the pair decides. A commit that crosses the abort, or a
// pair closed by a source that exited, leaves the listener stored (the
// agent's copy is the only one); an abort drops it; a source that says
// nothing at all is cut off after a grace period, and its commit then
// fails, so that it knows to keep serving.
func TestStoreDeadlineAfterReady(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	base := fdCount(t)
	cases := []struct {
		name string
		// word is what the source does once it heard the agent's abort
		// on its session.
		word func(t *testing.T, pair *wire.Conn, txid uint64)
		kept bool
	}{
		{
			name: "commit crossing the abort",
			word: func(t *testing.T, pair *wire.Conn, txid uint64) {
				if err := pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: txid}}); err != nil {
					t.Fatalf("commit on the pair: %v", err)
				}
			},
			kept: true,
		},
		{
			name: "source exits",
			word: func(t *testing.T, pair *wire.Conn, _ uint64) { pair.Close() },
			kept: true,
		},
		{
			name: "source aborts",
			word: func(t *testing.T, pair *wire.Conn, txid uint64) {
				send(t, pair, wire.TypeAbort, txid, wire.Failure{Code: wire.CodeDeadline, Reason: "as asked"}.Marshal())
			},
		},
		{
			name: "source silent",
			word: func(*testing.T, *wire.Conn, uint64) {},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "svc-" + tc.name
			src, srcID := join(t, at, name, false)
			// Short: the test waits for it to pass after Ready.
			const timeout = 300 * time.Millisecond
			done := make(chan storeOutcome, 1)
			go func() {
				res, err := at.StoreFrom(srcID, wire.MoveAll, timeout, time.Minute, nil)
				done <- storeOutcome{res, err}
			}()
			txid, pair := recvPrepare(t, src)
			ln, fd := listenerFD(t)
			addr := ln.Addr().String()
			send(t, src, wire.TypeBatch, txid, listenerBatch(1), fd)
			send(t, src, wire.TypeExported, txid, wire.Summary{Listeners: 1, Batches: 1, FreezeStartNS: wire.Monotonic()}.Marshal())
			recvType(t, pair, wire.TypeReady)
			// The deadline passes: the agent asks the source to abort.
			recvFailure(t, src, wire.TypeAbort, wire.CodeDeadline)
			ln.Close() // the source's own copy: from here on only the agent's may remain
			tc.word(t, pair, txid)
			res := waitStore(t, done)
			t.Logf("store: %s %s: %s", res.Phase, res.Reason, res.Message)
			cl, err := net.DialTimeout("tcp", addr, bound)
			if err == nil {
				cl.Close()
			}
			if tc.kept {
				if res.Phase != nodeagent.PhaseCompleted || res.Listeners != 1 {
					t.Fatalf("store result %+v: want Completed with the listener kept", res)
				}
				if err != nil {
					t.Fatalf("the stored listener does not accept: %v", err)
				}
				found := false
				for _, st := range storedEntries(t, at) {
					found = found || st.Name == name && st.Listeners == 1
				}
				if !found {
					t.Fatalf("nothing stored for %q", name)
				}
				return
			}
			if res.Phase != nodeagent.PhaseFailed || res.Code != wire.CodeDeadline {
				t.Fatalf("store result %+v: want Failed for the deadline", res)
			}
			if err == nil {
				t.Fatalf("%s still accepts after the store failed", addr)
			}
			// The agent decided without the source: a commit now must
			// fail, or the source would let go of sockets nobody holds.
			if err := pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: txid}}); err == nil {
				t.Fatal("a commit on the pair was accepted after the agent dropped the descriptors")
			}
		})
	}
	at.stop()
	waitFDs(t, base-1, "after the agent stopped") // its listener is gone too
	if l := at.logs.find("closing stored descriptors", "reason", "agent shutting down"); l == nil {
		t.Fatal("the kept descriptors were not closed at shutdown")
	}
}

// TestPairShutReadDecides checks the kernel behaviour the store's last
// resort relies on: once the agent shuts the read side of its pair end, a
// Commit the source queued before is still read, and one it sends after
// fails at the source instead of vanishing unread.
func TestPairShutReadDecides(t *testing.T) {
	a, b, err := wire.Pair()
	if err != nil {
		t.Fatal(err)
	}
	src, err := wire.FromFD(a, "source end")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	agent, err := wire.FromFD(b, "agent end")
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	send(t, src, wire.TypeCommit, 1, nil)
	if err := agent.Unix().CloseRead(); err != nil {
		t.Fatalf("shut the read side: %v", err)
	}
	if err := src.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: 2}}); err == nil {
		t.Fatal("a commit sent after the shutdown was accepted")
	}
	if m := recvType(t, agent, wire.TypeCommit); m.TxID != 1 {
		t.Fatalf("read commit %d, want the one queued before the shutdown", m.TxID)
	}
	agent.SetReadDeadline(time.Now().Add(bound))
	if m, err := agent.Recv(); !errors.Is(err, wire.ErrClosed) {
		t.Fatalf("after the queued commit: %v %v, want the pair closed", m.Type, err)
	}
}

// TestStoreSameKeyRefusedWhileStoring: two sessions with the same name
// and uid (so the same store key) are stored at once. The second request
// is refused as busy while the first is still collecting, instead of
// overwriting its entry later and leaking its descriptors; a store that
// fails gives the key back; and what the first stored is closed when the
// agent stops.
func TestStoreSameKeyRefusedWhileStoring(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	src1, id1 := join(t, at, "svc", false)
	_, id2 := join(t, at, "svc", false)

	done := storeAsync(at, id1, time.Minute)
	txid, pair := recvPrepare(t, src1)
	// Short: before the fix the second store starts, and nothing answers it.
	_, err := at.StoreFrom(id2, wire.MoveAll, 300*time.Millisecond, time.Minute, nil)
	if !errors.Is(err, nodeagent.ErrBusy) {
		t.Fatalf("a second store for the same key while the first collects: %v, want ErrBusy", err)
	}

	p := newProbe(t)
	send(t, src1, wire.TypeBatch, txid, listenerBatch(1), p.w)
	p.closeWrite()
	send(t, src1, wire.TypeExported, txid, wire.Summary{Listeners: 1, Batches: 1}.Marshal())
	recvType(t, pair, wire.TypeReady)
	send(t, pair, wire.TypeCommit, txid, nil)
	if res := waitStore(t, done); res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("first store %+v: want Completed", res)
	}
	if _, err := at.StoreFrom(id2, wire.MoveAll, 300*time.Millisecond, time.Minute, nil); !errors.Is(err, nodeagent.ErrBusy) {
		t.Fatalf("a second store for the same key once the first is stored: %v, want ErrBusy", err)
	}

	// A failed store releases its key: the same session may try again.
	other, otherID := join(t, at, "other", false)
	for i := range 2 {
		done := storeAsync(at, otherID, time.Minute)
		txid, _ := recvPrepare(t, other)
		send(t, other, wire.TypeAbort, txid, wire.Failure{Code: wire.CodeExport, Reason: "not now"}.Marshal())
		if res := waitStore(t, done); res.Phase != nodeagent.PhaseFailed {
			t.Fatalf("store %d of a source that aborts: %+v, want Failed", i+1, res)
		}
	}

	at.stop()
	p.expectReleased(t)
}

// TestStoreCompletingAfterStop: a store whose source commits after the
// agent began to stop does not outlive the agent: its descriptors are
// closed at once instead of waiting out the hold in an agent that is gone.
func TestStoreCompletingAfterStop(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	src, id := join(t, at, "svc", false)
	done := storeAsync(at, id, time.Minute)
	txid, pair := recvPrepare(t, src)
	p := newProbe(t)
	send(t, src, wire.TypeBatch, txid, listenerBatch(1), p.w)
	p.closeWrite()
	send(t, src, wire.TypeExported, txid, wire.Summary{Listeners: 1, Batches: 1}.Marshal())
	recvType(t, pair, wire.TypeReady)
	at.stop()
	expectClosed(t, src)
	send(t, pair, wire.TypeCommit, txid, nil)
	res := waitStore(t, done)
	t.Logf("store: %+v", res)
	p.expectReleased(t)
	at.waitLog(t, "closing stored descriptors", "name", "svc", "reason", "agent shutting down")
}

// TestStorePause: a store reports as its pause the time from the source's
// freeze to its letting go, in its result and in its log line, rather
// than a pause of 0s.
func TestStorePause(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	src, id := join(t, at, "svc", false)
	done := storeAsync(at, id, time.Minute)
	txid, pair := recvPrepare(t, src)
	p := newProbe(t)
	send(t, src, wire.TypeBatch, txid, listenerBatch(1), p.w)
	p.closeWrite()
	// The source says it froze a quarter of a second ago.
	const frozen = 250 * time.Millisecond
	freeze := wire.Monotonic() - uint64(frozen)
	send(t, src, wire.TypeExported, txid, wire.Summary{Listeners: 1, Batches: 1, FreezeStartNS: freeze}.Marshal())
	recvType(t, pair, wire.TypeReady)
	send(t, pair, wire.TypeCommit, txid, nil)
	res := waitStore(t, done)
	upper := time.Duration(wire.Monotonic() - freeze)
	if res.Phase != nodeagent.PhaseCompleted || res.Pause() < frozen || res.Pause() > upper {
		t.Fatalf("store result %+v: want Completed with a pause between %v and %v", res, frozen, upper)
	}
	l := at.waitLog(t, "migration completed", "txid", txid)
	if pause, _ := time.ParseDuration(fmt.Sprint(l["pause"])); pause != res.Pause() {
		t.Fatalf("logged pause %v, want the result's %v", l["pause"], res.Pause())
	}
	at.stop()
	p.expectReleased(t)
}
