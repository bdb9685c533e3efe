package nodeagent_test

import (
	"net"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

type storeOutcome struct {
	res admin.Result
	err error
}

// storeAsync runs StoreFrom(from) on its own goroutine: the test plays the
// source on this one.
func storeAsync(at *agentT, from uint64, hold time.Duration) <-chan storeOutcome {
	ch := make(chan storeOutcome, 1)
	go func() {
		res, err := at.StoreFrom(from, wire.MoveAll, bound, hold, nil)
		ch <- storeOutcome{res, err}
	}()
	return ch
}

func waitStore(t *testing.T, ch <-chan storeOutcome) admin.Result {
	t.Helper()
	select {
	case o := <-ch:
		if o.err != nil {
			t.Fatalf("store: %v", o.err)
		}
		return o.res
	case <-time.After(bound):
		t.Fatalf("store did not end within %v", bound)
	}
	return admin.Result{}
}

// recvPrepare receives the Prepare a source gets and adopts the pair end
// it carries.
func recvPrepare(t *testing.T, c *wire.Conn) (uint64, *wire.Conn) {
	t.Helper()
	m := recvType(t, c, wire.TypePrepare)
	if len(m.FDs) != 1 || m.TxID == 0 {
		m.CloseFDs()
		t.Fatalf("prepare with txid %d and %d descriptors, want a txid and the pair end", m.TxID, len(m.FDs))
	}
	pair, err := wire.FromFD(m.FDs[0], "pair")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pair.Close() })
	return m.TxID, pair
}

// TestForgedTransactionMessages: a second session, with the same name as
// the source, sends a batch, an exported and an abort carrying the
// source's transaction id. The batch and exported are refused (and the
// batch's descriptor closed), the abort is ignored, and the transaction
// completes with what the real source sent and nothing else.
func TestForgedTransactionMessages(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	base := fdCount(t)
	src, srcID := join(t, at, "svc", false)
	forger, forgerID := join(t, at, "svc", false)

	// Long enough that the dial below reaches the listener before it expires.
	const hold = time.Second
	done := storeAsync(at, srcID, hold)
	txid, pair := recvPrepare(t, src)

	p := newProbe(t)
	b := listenerBatch(1)
	sendRaw(t, forger, frame(honest(wire.TypeBatch, txid, b, 1), b), unix.UnixRights(p.w))
	p.closeWrite()
	recvFailure(t, forger, wire.TypeError, wire.CodeRefused)
	send(t, forger, wire.TypeExported, txid, wire.Summary{Listeners: 1, Batches: 1}.Marshal())
	recvFailure(t, forger, wire.TypeError, wire.CodeRefused)
	send(t, forger, wire.TypeAbort, txid, wire.Failure{Code: wire.CodeExport, Reason: "forged"}.Marshal())
	p.expectReleased(t)

	// The real source exports one listener and commits.
	ln, fd := listenerFD(t)
	send(t, src, wire.TypeBatch, txid, listenerBatch(1), fd)
	send(t, src, wire.TypeExported, txid, wire.Summary{Listeners: 1, Batches: 1, FreezeStartNS: wire.Monotonic()}.Marshal())
	recvType(t, pair, wire.TypeReady)
	if err := pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: txid}}); err != nil {
		t.Fatal(err)
	}
	res := waitStore(t, done)
	if res.Phase != nodeagent.PhaseCompleted || res.Listeners != 1 || res.Batches != 1 || res.Connections != 0 {
		t.Fatalf("store result %+v: want Completed with the source's one listener in one batch", res)
	}
	pair.Close()
	addr := ln.Addr().String()
	ln.Close()

	// The agent now holds the only copy of the listener: it still takes
	// connections into its backlog.
	cl, err := net.DialTimeout("tcp", addr, bound)
	if err != nil {
		t.Fatalf("dial the stored listener: %v", err)
	}
	cl.Close()

	ac := adminDial(t, at)
	if ids := sessionIDs(t, ac); !slices.Contains(ids, forgerID) {
		t.Fatalf("the forger's session %d was closed; refusals keep it: %v", forgerID, ids)
	}
	at.waitLog(t, "closing stored descriptors", "name", "svc", "listeners", 1)
	src.Close()
	forger.Close()
	waitGone(t, ac, srcID)
	waitGone(t, ac, forgerID)
	ac.Close()
	assertServes(t, at, base)
}

// TestBadBatchInTransaction: the source of a store sends a batch whose
// descriptors do not match what it announces. The store fails with a
// reason, nothing is stored, and every descriptor received in the
// transaction — including those of earlier good batches — is closed.
func TestBadBatchInTransaction(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	cases := []struct {
		name string
		// bad sends the batches; the probes' write ends are the
		// descriptors to send.
		bad func(t *testing.T, c *wire.Conn, txid uint64, p1, p2 *fdProbe)
		// code is the result's code; closed says the agent closes the
		// session (with an Error), else it sends the source Abort.
		code   wire.Code
		closed bool
	}{
		{
			name: "header announces more descriptors than arrive",
			bad: func(t *testing.T, c *wire.Conn, txid uint64, p1, _ *fdProbe) {
				b := listenerBatch(2)
				sendRaw(t, c, frame(honest(wire.TypeBatch, txid, b, 2), b), unix.UnixRights(p1.w))
			},
			code: wire.CodeSourceLost, closed: true,
		},
		{
			name: "descriptors the header does not announce",
			bad: func(t *testing.T, c *wire.Conn, txid uint64, p1, p2 *fdProbe) {
				b := listenerBatch(2)
				sendRaw(t, c, frame(honest(wire.TypeBatch, txid, b, 0), b), unix.UnixRights(p1.w, p2.w))
			},
			code: wire.CodeSourceLost, closed: true,
		},
		{
			name: "body describes fewer descriptors than arrive",
			bad: func(t *testing.T, c *wire.Conn, txid uint64, p1, p2 *fdProbe) {
				send(t, c, wire.TypeBatch, txid, listenerBatch(1), p1.w, p2.w)
			},
			code: wire.CodeMalformed,
		},
		{
			name: "body describes more descriptors than arrive",
			bad: func(t *testing.T, c *wire.Conn, txid uint64, p1, _ *fdProbe) {
				send(t, c, wire.TypeBatch, txid, listenerBatch(3), p1.w)
			},
			code: wire.CodeMalformed,
		},
		{
			name: "a good batch, then one out of sequence",
			bad: func(t *testing.T, c *wire.Conn, txid uint64, p1, p2 *fdProbe) {
				send(t, c, wire.TypeBatch, txid, listenerBatch(1), p1.w)
				if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, TxID: txid, Seq: 5}, Body: listenerBatch(1), FDs: []int{p2.w}}); err != nil {
					t.Fatal(err)
				}
			},
			code: wire.CodeMalformed,
		},
		{
			name: "a good batch, then an exported that does not add up",
			bad: func(t *testing.T, c *wire.Conn, txid uint64, p1, _ *fdProbe) {
				send(t, c, wire.TypeBatch, txid, listenerBatch(1), p1.w)
				send(t, c, wire.TypeExported, txid, wire.Summary{Listeners: 2, Batches: 1}.Marshal())
			},
			code: wire.CodeMalformed,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := fdCount(t)
			src, srcID := join(t, at, "svc", false)
			done := storeAsync(at, srcID, bound)
			txid, pair := recvPrepare(t, src)
			p1, p2 := newProbe(t), newProbe(t)
			tc.bad(t, src, txid, p1, p2)
			p1.closeWrite()
			p2.closeWrite()
			if tc.closed {
				recvFailure(t, src, wire.TypeError, wire.CodeMalformed)
				expectClosed(t, src)
			} else {
				f := recvFailure(t, src, wire.TypeAbort, wire.CodeMalformed)
				t.Logf("source told: %s", f)
			}
			res := waitStore(t, done)
			if res.Phase != nodeagent.PhaseFailed || res.Code != tc.code || res.Message == "" {
				t.Fatalf("store result %+v: want Failed with code %s and a message", res, tc.code)
			}
			t.Logf("store failed: %s: %s", res.Reason, res.Message)
			p1.expectReleased(t)
			p2.expectReleased(t)
			ac := adminDial(t, at)
			r, err := ac.Sessions()
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Stored) != 0 {
				t.Fatalf("a failed store left descriptors stored: %+v", r.Stored)
			}
			pair.Close()
			src.Close()
			waitGone(t, ac, srcID)
			ac.Close()
			assertServes(t, at, base)
		})
	}
}
