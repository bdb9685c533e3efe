package handoff_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	handoff "github.com/handoff-dev/handoff/sdk"
	"github.com/handoff-dev/handoff/wire"
)

// fakeAgent is a test's agent for one SDK target in this process: it
// welcomes it on version 3 and sends what a case says.
type fakeAgent struct {
	c      *wire.Conn
	pair   *wire.Conn // the source's end
	txid   uint64
	seq    uint32
	seals  uint32
	probes []*os.File // the other end of every connection sent as a copy
	joined chan error
}

func startFakeAgent(t *testing.T, beginFlags uint16) *fakeAgent {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fa := &fakeAgent{txid: 7, joined: make(chan error, 1)}
	go func() {
		p, err := handoff.Join(context.Background(), handoff.Options{Socket: sock, Name: "app", Standby: true, Logf: t.Logf})
		if p != nil {
			p.Close()
		}
		fa.joined <- err
	}()
	ln.SetDeadline(time.Now().Add(20 * time.Second))
	uc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	fa.c = wire.NewConn(uc)
	t.Cleanup(func() { fa.c.Close() })
	fa.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if m, err := fa.c.Recv(); err != nil || m.Type != wire.TypeHello {
		t.Fatalf("expected hello: %v %v", m.Type, err)
	}
	fa.c.SetVersion(wire.MaxVersion)
	fa.send(t, wire.Msg{Header: wire.Header{Type: wire.TypeWelcome}, Body: wire.Welcome{Version: wire.MaxVersion, SessionID: 1, PID: uint32(os.Getpid())}.Marshal()})
	pa, pb, err := wire.Pair()
	if err != nil {
		t.Fatal(err)
	}
	if fa.pair, err = wire.FromFD(pa, "pair"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fa.pair.Close() })
	fa.send(t, wire.Msg{Header: wire.Header{Type: wire.TypeBegin, Flags: beginFlags, TxID: fa.txid}, Body: wire.Begin{TimeoutMS: 20000, Source: 2, SourceName: "app"}.Marshal(), FDs: []int{pb}})
	unix.Close(pb)
	return fa
}

func (fa *fakeAgent) send(t *testing.T, m wire.Msg) {
	t.Helper()
	if err := fa.c.Send(m); err != nil {
		t.Fatalf("fake agent: send %v: %v", m.Type, err)
	}
}

// copies sends a copy batch of n connections (one end of a socket pair
// each; the test keeps the other end to see when every copy is closed).
func (fa *fakeAgent) copies(t *testing.T, n int, state []byte) {
	t.Helper()
	es := make([]wire.Entry, n)
	fds := make([]int, n)
	for i := range es {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		es[i] = wire.Entry{Kind: wire.KindConn, Key: "unix"}
		fds[i] = p[0]
		fa.probes = append(fa.probes, os.NewFile(uintptr(p[1]), "probe"))
	}
	body, flags := wire.AppendCopyBatch(nil, es)
	if state != nil {
		// A copy entry that carries a state: rewrite the first entry's
		// state length and append the bytes.
		body = append(body[:8+4], append([]byte{byte(len(state)), 0, 0, 0}, body[8+8:]...)...)
		body = append(body, state...)
	}
	fa.send(t, wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: flags, TxID: fa.txid, Seq: fa.seq}, Body: body, FDs: fds})
	fa.seq++
	wire.CloseAll(fds)
	t.Cleanup(func() {
		for _, p := range fa.probes {
			p.Close()
		}
	})
}

func (fa *fakeAgent) seal(t *testing.T, flags uint16, body []byte, fds ...int) {
	t.Helper()
	fa.send(t, wire.Msg{Header: wire.Header{Type: wire.TypeSeal, Flags: flags, TxID: fa.txid, Seq: fa.seals}, Body: body, FDs: fds})
	fa.seals++
}

func sealBody(es ...wire.SealEntry) []byte {
	b, _, _ := wire.AppendSeal(nil, es)
	return b
}

// TestTargetBadPrecopy sends an SDK target each malformed pre-copy
// message: it aborts with the right code, Join returns ErrAborted, and
// every copy it held is closed (the probes see the other end close).
func TestTargetBadPrecopy(t *testing.T) {
	keepE := func(i uint32) wire.SealEntry {
		return wire.SealEntry{Index: i, Verdict: wire.SealKeep, State: []byte("s")}
	}
	cases := []struct {
		name  string
		flags uint16 // Begin's
		code  wire.Code
		says  string
		run   func(t *testing.T, fa *fakeAgent)
	}{
		{"seal naming no copy", wire.BeginCopy, wire.CodeMalformed, "names copy 9 of 3", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 3, nil)
			fa.seal(t, 0, sealBody(keepE(9)))
		}},
		{"second verdict", wire.BeginCopy, wire.CodeMalformed, "second verdict", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 3, nil)
			fa.seal(t, 0, sealBody(keepE(1), keepE(1)))
		}},
		{"truncated seal", wire.BeginCopy, wire.CodeMalformed, "seal", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 3, nil)
			fa.seal(t, 0, sealBody(keepE(0), keepE(1))[:15])
		}},
		{"memfd flag without the memfd", wire.BeginCopy, wire.CodeMalformed, "memfd true but 0 descriptors", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 3, nil)
			b := sealBody(keepE(0))
			b[2] = byte(wire.BatchMemfd)
			fa.seal(t, wire.BatchMemfd, b)
		}},
		{"copy carrying a state", wire.BeginCopy, wire.CodeMalformed, "copy entry 0 carries a state", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 2, []byte("x"))
		}},
		{"copies without begin's flag", 0, wire.CodeMalformed, "no pre-copy", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 2, nil)
		}},
		{"seal without begin's flag", 0, wire.CodeUnexpected, "no pre-copy", func(t *testing.T, fa *fakeAgent) {
			fa.seal(t, 0, sealBody(keepE(0)))
		}},
		{"end with a copy left undecided", wire.BeginCopy, wire.CodeMalformed, "1 of 3 copies got no verdict", func(t *testing.T, fa *fakeAgent) {
			fa.copies(t, 3, nil)
			fa.seal(t, 0, sealBody(keepE(0), keepE(1)))
			fa.send(t, wire.Msg{Header: wire.Header{Type: wire.TypeEnd, TxID: fa.txid}, Body: wire.Summary{Conns: 2, Batches: 1, StateBytes: 2, Copies: 3, Seals: 1}.Marshal()})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fa := startFakeAgent(t, tc.flags)
			tc.run(t, fa)
			fa.c.SetReadDeadline(time.Now().Add(20 * time.Second))
			m, err := fa.c.Recv()
			if err != nil || m.Type != wire.TypeAbort {
				t.Fatalf("fake agent: %v %v, want the target's Abort", m.Type, err)
			}
			var f wire.Failure
			if err := f.Unmarshal(m.Body); err != nil || f.Code != tc.code || !strings.Contains(f.Reason, tc.says) {
				t.Fatalf("target aborted with %v (%v), want %s saying %q", f, err, tc.code, tc.says)
			}
			// End the target's drain, as the agent does (after End the
			// target does not drain, and may have left already).
			_ = fa.c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: fa.txid}, Body: f.Marshal()})
			if err := <-fa.joined; !errors.Is(err, handoff.ErrAborted) {
				t.Fatalf("Join: %v, want ErrAborted", err)
			}
			for i, p := range fa.probes {
				p.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := p.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("copy %d: the target still holds it (read %v, want EOF)", i, err)
				}
			}
		})
	}
}
