package nodeagent_test

import (
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// precopyT is a migration between two raw version-3 sessions that the
// test plays: the source sends what each case says, the target reads what
// the agent relays.
type precopyT struct {
	src, dst   *wire.Conn
	txid       uint64
	srcPair    *wire.Conn
	dstPair    *wire.Conn
	done       chan admin.Result
	seq, seals uint32
	probes     []*fdProbe // every copy sent
}

func startPrecopy(t *testing.T, at *agentT) *precopyT {
	t.Helper()
	src, srcID := join(t, at, "svc", false)
	dst, dstID := join(t, at, "svc", true)
	pt := &precopyT{src: src, dst: dst, done: make(chan admin.Result, 1)}
	go func() {
		res, err := at.Migrate(srcID, dstID, wire.MoveAll, bound, nil)
		if err != nil {
			res.Message = err.Error()
		}
		pt.done <- res
	}()
	m := recvType(t, src, wire.TypePrepare)
	if m.Flags&wire.PrepareCopy == 0 || len(m.FDs) != 1 {
		m.CloseFDs()
		t.Fatalf("prepare between two version-3 sessions: flags %#x, %d descriptors; want PrepareCopy and the pair end", m.Flags, len(m.FDs))
	}
	pt.txid = m.TxID
	var err error
	if pt.srcPair, err = wire.FromFD(m.FDs[0], "pair"); err != nil {
		t.Fatal(err)
	}
	b := recvType(t, dst, wire.TypeBegin)
	if b.Flags&wire.BeginCopy == 0 || len(b.FDs) != 1 {
		b.CloseFDs()
		t.Fatalf("begin between two version-3 sessions: flags %#x; want BeginCopy", b.Flags)
	}
	if pt.dstPair, err = wire.FromFD(b.FDs[0], "pair"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pt.srcPair.Close(); pt.dstPair.Close() })
	return pt
}

// copies sends a copy batch of n listener copies, each a probe's write
// end, and returns the probes.
func (pt *precopyT) copies(t *testing.T, n int) []*fdProbe {
	t.Helper()
	es := make([]wire.Entry, n)
	ps := make([]*fdProbe, n)
	fds := make([]int, n)
	for i := range es {
		es[i] = wire.Entry{Kind: wire.KindListener, Key: "tcp|:1"}
		ps[i] = newProbe(t)
		fds[i] = ps[i].w
	}
	body, flags := wire.AppendCopyBatch(nil, es)
	if err := pt.src.Send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: flags, TxID: pt.txid, Seq: pt.seq}, Body: body, FDs: fds}); err != nil {
		t.Fatal(err)
	}
	pt.seq++
	for _, p := range ps {
		p.closeWrite()
	}
	pt.probes = append(pt.probes, ps...)
	return ps
}

func (pt *precopyT) seal(t *testing.T, es ...wire.SealEntry) {
	t.Helper()
	body, flags, _ := wire.AppendSeal(nil, es)
	if err := pt.src.Send(wire.Msg{Header: wire.Header{Type: wire.TypeSeal, Flags: flags, TxID: pt.txid, Seq: pt.seals}, Body: body}); err != nil {
		t.Fatal(err)
	}
	pt.seals++
}

func (pt *precopyT) exported(t *testing.T, s wire.Summary) {
	t.Helper()
	s.FreezeStartNS = wire.Monotonic()
	send(t, pt.src, wire.TypeExported, pt.txid, s.Marshal())
}

func (pt *precopyT) result(t *testing.T) admin.Result {
	t.Helper()
	select {
	case res := <-pt.done:
		return res
	case <-time.After(bound):
		t.Fatalf("migration did not end within %v", bound)
	}
	return admin.Result{}
}

func keep(i uint32, state string) wire.SealEntry {
	return wire.SealEntry{Index: i, Verdict: wire.SealKeep, State: []byte(state)}
}

func drop(i uint32) wire.SealEntry { return wire.SealEntry{Index: i, Verdict: wire.SealDrop} }

// TestPrecopyRelay: copies, then a Seal keeping two and dropping one;
// the target sees them relayed as sent, with the counts in End, and the
// result reports the copies and the drop.
func TestPrecopyRelay(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	pt := startPrecopy(t, at)
	ps := pt.copies(t, 3)
	m := recvType(t, pt.dst, wire.TypeBatch)
	if m.Flags != wire.BatchCopy || len(m.FDs) != 3 || m.Seq != 0 {
		t.Fatalf("relayed copy batch: flags %#x, %d descriptors, seq %d", m.Flags, len(m.FDs), m.Seq)
	}
	m.CloseFDs()
	for _, p := range ps {
		p.expectReleased(t) // the agent's copies and the target's
	}
	pt.seal(t, keep(0, ""), drop(1), keep(2, ""))
	s := recvType(t, pt.dst, wire.TypeSeal)
	var si wire.SealInfo
	if err := wire.DecodeSealInto(&si, s.Body, len(s.FDs)); err != nil || len(si.Entries) != 3 || si.Entries[1].Verdict != wire.SealDrop {
		t.Fatalf("relayed seal: %+v, %v", si, err)
	}
	pt.exported(t, wire.Summary{Listeners: 2, Batches: 1, Copies: 3, Seals: 1})
	e := recvType(t, pt.dst, wire.TypeEnd)
	var sum wire.Summary
	if err := sum.Unmarshal(e.Body); err != nil || sum.Copies != 3 || sum.Seals != 1 || sum.Listeners != 2 {
		t.Fatalf("end: %+v, %v", sum, err)
	}
	if err := pt.dstPair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeReady, TxID: pt.txid}}); err != nil {
		t.Fatal(err)
	}
	recvType(t, pt.srcPair, wire.TypeReady)
	if err := pt.srcPair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: pt.txid}}); err != nil {
		t.Fatal(err)
	}
	send(t, pt.src, wire.TypeCommitted, pt.txid, wire.Stamp{MonoNS: wire.Monotonic()}.Marshal())
	send(t, pt.dst, wire.TypeServing, pt.txid, wire.Stamp{MonoNS: wire.Monotonic()}.Marshal())
	res := pt.result(t)
	if res.Phase != nodeagent.PhaseCompleted || res.Copies != 3 || res.Dropped != 1 || res.Listeners != 2 {
		t.Fatalf("result %+v: want Completed, 3 copies, 1 dropped, 2 listeners", res)
	}
}

// TestPrecopyBadSource: each way a source can get the pre-copy wrong is
// refused with Malformed, the target hears the abort, and the agent keeps
// none of the copies.
func TestPrecopyBadSource(t *testing.T) {
	cases := []struct {
		name string
		says string
		run  func(t *testing.T, pt *precopyT)
	}{
		{"copy batch after an ordinary batch", "a copy batch after the source froze", func(t *testing.T, pt *precopyT) {
			ln, fd := listenerFD(t)
			defer ln.Close()
			send(t, pt.src, wire.TypeBatch, pt.txid, listenerBatch(1), fd)
			pt.seq++
			pt.copies(t, 1)
		}},
		{"seal naming no copy", "names copy 5 of 2", func(t *testing.T, pt *precopyT) {
			pt.copies(t, 2)
			pt.seal(t, keep(5, "x"))
		}},
		{"second verdict", "a second verdict", func(t *testing.T, pt *precopyT) {
			pt.copies(t, 2)
			pt.seal(t, keep(0, "x"), drop(0))
		}},
		{"seal out of sequence", "seal 1 arrived where 0 was due", func(t *testing.T, pt *precopyT) {
			pt.copies(t, 1)
			pt.seals = 1
			pt.seal(t, keep(0, ""))
		}},
		{"copy without a verdict", "1 of 2 copies got no verdict", func(t *testing.T, pt *precopyT) {
			pt.copies(t, 2)
			pt.seal(t, keep(0, ""))
			pt.exported(t, wire.Summary{Listeners: 1, Batches: 1, Copies: 2, Seals: 1})
		}},
		{"counts that disagree", "the source announces", func(t *testing.T, pt *precopyT) {
			pt.copies(t, 2)
			pt.seal(t, keep(0, ""), keep(1, ""))
			pt.exported(t, wire.Summary{Listeners: 2, Batches: 1, Copies: 2})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			at := startAgentT(t, nodeagent.Config{})
			pt := startPrecopy(t, at)
			tc.run(t, pt)
			f := recvFailure(t, pt.src, wire.TypeAbort, wire.CodeMalformed)
			if !strings.Contains(f.Reason, tc.says) {
				t.Fatalf("abort to the source says %q, want it to say %q", f.Reason, tc.says)
			}
			// The target hears it after whatever was relayed before.
			for {
				m := recv(t, pt.dst)
				m.CloseFDs()
				if m.Type == wire.TypeAbort {
					break
				}
			}
			send(t, pt.src, wire.TypeAbort, pt.txid, f.Marshal()) // the source confirms
			res := pt.result(t)
			if res.Phase != nodeagent.PhaseFailed || res.Code != wire.CodeMalformed {
				t.Fatalf("result %+v, want Failed: Malformed", res)
			}
			// Every copy is closed wherever it went: the agent kept none.
			for _, p := range pt.probes {
				p.expectReleased(t)
			}
		})
	}
}
