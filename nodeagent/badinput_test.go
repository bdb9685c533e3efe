package nodeagent_test

import (
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/wire"
)

// frame builds a datagram from h exactly as given (BodyLen and NFDs are not
// derived from body, so a test can make them lie) followed by body.
func frame(h wire.Header, body []byte) []byte {
	b := make([]byte, wire.HeaderLen+len(body))
	wire.PutHeader(b, h)
	copy(b[wire.HeaderLen:], body)
	return b
}

// honest is the header a correct peer would send for body with nfds
// descriptors.
func honest(typ wire.Type, txid uint64, body []byte, nfds int) wire.Header {
	return wire.Header{Version: wire.MaxVersion, Type: typ, TxID: txid, BodyLen: uint32(len(body)), NFDs: uint16(nfds)}
}

func helloBody(name string) []byte {
	return wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleApp, Name: name}.Marshal()
}

// listenerBatch is the body of a batch of n listener entries.
func listenerBatch(n int) []byte {
	es := make([]wire.Entry, n)
	for i := range es {
		es[i] = wire.Entry{Kind: wire.KindListener, Key: "tcp|127.0.0.1:0"}
	}
	b, _, _ := wire.MarshalBatch(es)
	return b
}

// fdProbe is a pipe whose write end is handed to the agent. Once every
// copy of the write end is closed the read end sees EOF: that proves the
// agent closed what it received, whatever descriptor number it got.
type fdProbe struct {
	r *os.File
	w int
}

func newProbe(t *testing.T) *fdProbe {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatalf("pipe: %v", err)
	}
	pr := &fdProbe{r: os.NewFile(uintptr(p[0]), "probe"), w: p[1]}
	t.Cleanup(pr.close)
	return pr
}

func (p *fdProbe) closeWrite() {
	if p.w >= 0 {
		unix.Close(p.w)
		p.w = -1
	}
}

func (p *fdProbe) close() {
	p.closeWrite()
	p.r.Close()
}

// expectReleased closes the test's own write end and waits until the
// agent has closed every copy it was sent, then closes the read end.
func (p *fdProbe) expectReleased(t *testing.T) {
	t.Helper()
	p.closeWrite()
	p.r.SetReadDeadline(time.Now().Add(bound))
	_, err := p.r.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the agent still holds a descriptor it was sent %v ago", bound)
	}
	if err != io.EOF {
		t.Fatalf("probe read: %v, want EOF", err)
	}
	p.r.Close()
}

// badCase is one malformed or unwelcome datagram on the agent socket.
type badCase struct {
	name string
	// joined sends the datagram in an application session, after a
	// successful hello; else it is the first thing the peer says.
	joined bool
	// msg returns the datagram and the descriptors to attach; p.w is a
	// descriptor the agent must close.
	msg func(p *fdProbe) ([]byte, []int)
	// code is what the agent's Error must carry; 0 means it closes the
	// connection without one.
	code wire.Code
	// stays says the session survives the refusal.
	stays bool
}

func badCases() []badCase {
	rnd := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 200)
	for i := range garbage {
		garbage[i] = byte(rnd.Uint32())
	}
	garbage[0] = 'X' // never the magic by accident
	hb := helloBody("bad")
	helloFrame := frame(honest(wire.TypeHello, 0, hb, 0), hb)
	big := make([]byte, wire.MaxBody+1000)
	none := func(b []byte) func(*fdProbe) ([]byte, []int) {
		return func(*fdProbe) ([]byte, []int) { return b, nil }
	}
	var cs []badCase
	for _, joined := range []bool{false, true} {
		at := "first message"
		if joined {
			at = "in session"
		}
		typ := wire.TypeHello
		body := hb
		if joined {
			typ, body = wire.TypeRequest, []byte(`{"op":"sessions"}`)
		}
		set := []badCase{
			{name: at + "/garbage", msg: none(garbage), code: wire.CodeMalformed},
			{name: at + "/truncated header", msg: none(helloFrame[:wire.HeaderLen-7]), code: wire.CodeMalformed},
			{name: at + "/body shorter than announced", msg: none(func() []byte {
				h := honest(typ, 0, body, 0)
				h.BodyLen += 100
				return frame(h, body)
			}()), code: wire.CodeMalformed},
			{name: at + "/oversized datagram with a descriptor", msg: func(p *fdProbe) ([]byte, []int) {
				return frame(honest(typ, 0, big, 1), big), []int{p.w}
			}, code: wire.CodeMalformed},
			{name: at + "/announced body over the limit", msg: none(func() []byte {
				h := honest(typ, 0, nil, 0)
				h.BodyLen = wire.MaxBody + 1
				return frame(h, nil)
			}()), code: wire.CodeMalformed},
			{name: at + "/wrong magic", msg: none(func() []byte {
				b := frame(honest(typ, 0, body, 0), body)
				copy(b, "HOFX")
				return b
			}()), code: wire.CodeMalformed},
			{name: at + "/unknown header version", msg: none(func() []byte {
				h := honest(typ, 0, body, 0)
				h.Version = wire.MaxVersion + 1
				return frame(h, body)
			}()), code: wire.CodeVersion},
			{name: at + "/unknown message type", msg: none(frame(honest(wire.Type(99), 0, body, 0), body)), code: wire.CodeMalformed},
			{name: at + "/announces more descriptors than it carries", msg: func(p *fdProbe) ([]byte, []int) {
				b := listenerBatch(3)
				return frame(honest(wire.TypeBatch, 0, b, 3), b), []int{p.w}
			}, code: wire.CodeMalformed},
			{name: at + "/carries descriptors it does not announce", msg: func(p *fdProbe) ([]byte, []int) {
				b := listenerBatch(2)
				return frame(honest(wire.TypeBatch, 0, b, 0), b), []int{p.w, p.w}
			}, code: wire.CodeMalformed},
		}
		for _, c := range set {
			c.joined = joined
			cs = append(cs, c)
		}
	}
	cs = append(cs,
		badCase{name: "first message/not a hello", msg: none(frame(honest(wire.TypeRequest, 0, []byte(`{"op":"sessions"}`), 0), []byte(`{"op":"sessions"}`))), code: wire.CodeMalformed},
		badCase{name: "first message/empty datagram", msg: none(nil), code: wire.CodeMalformed},
		badCase{name: "first message/undecodable hello", msg: none(frame(honest(wire.TypeHello, 0, hb[:7], 0), hb[:7])), code: wire.CodeMalformed},
		badCase{name: "first message/unknown role", msg: none(func() []byte {
			b := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: 9, Name: "bad"}.Marshal()
			return frame(honest(wire.TypeHello, 0, b, 0), b)
		}()), code: wire.CodeMalformed},
		badCase{name: "first message/hello offering only future versions", msg: none(func() []byte {
			b := wire.Hello{MinVersion: wire.MaxVersion + 1, MaxVersion: wire.MaxVersion + 5, Role: wire.RoleApp, Name: "future"}.Marshal()
			return frame(honest(wire.TypeHello, 0, b, 0), b)
		}()), code: wire.CodeVersion},
		badCase{name: "first message/hello offering only version 0", msg: none(func() []byte {
			b := wire.Hello{MinVersion: 0, MaxVersion: 0, Role: wire.RoleApp, Name: "past"}.Marshal()
			return frame(honest(wire.TypeHello, 0, b, 0), b)
		}()), code: wire.CodeVersion},
		badCase{name: "in session/empty datagram", joined: true, msg: none(nil)},
		badCase{name: "in session/batch outside a transaction", joined: true, msg: func(p *fdProbe) ([]byte, []int) {
			b := listenerBatch(1)
			return frame(honest(wire.TypeBatch, 0, b, 1), b), []int{p.w}
		}, code: wire.CodeUnexpected, stays: true},
		badCase{name: "in session/batch for a transaction that does not exist", joined: true, msg: func(p *fdProbe) ([]byte, []int) {
			b := listenerBatch(1)
			return frame(honest(wire.TypeBatch, 77, b, 1), b), []int{p.w}
		}, code: wire.CodeRefused, stays: true},
		badCase{name: "in session/administrator request from an application", joined: true, msg: none(func() []byte {
			b := []byte(`{"op":"sessions"}`)
			return frame(honest(wire.TypeRequest, 0, b, 0), b)
		}()), code: wire.CodeUnexpected, stays: true},
		badCase{name: "in session/second hello", joined: true, msg: none(helloFrame), code: wire.CodeUnexpected, stays: true},
	)
	return cs
}

// TestBadInput sends one bad datagram per case to a single agent, checks
// the refusal, that every descriptor the datagram carried was closed, and
// that the agent goes on serving with no descriptor leaked.
func TestBadInput(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	for _, tc := range badCases() {
		t.Run(tc.name, func(t *testing.T) {
			base := fdCount(t)
			c := dialRaw(t, at)
			var id uint64
			if tc.joined {
				id = hello(t, c, "bad", false).SessionID
			}
			p := newProbe(t)
			b, fds := tc.msg(p)
			var oob []byte
			if len(fds) > 0 {
				oob = unix.UnixRights(fds...)
			}
			sendRaw(t, c, b, oob)
			p.closeWrite()
			if tc.code != 0 {
				f := recvFailure(t, c, wire.TypeError, tc.code)
				if f.Reason == "" {
					t.Errorf("Error %s carries no reason", f.Code)
				}
				t.Logf("refused: %s", f)
			}
			if tc.stays {
				ac := adminDial(t, at)
				if ids := sessionIDs(t, ac); !slices.Contains(ids, id) {
					t.Fatalf("session %d was closed after a refusal that should keep it: %v", id, ids)
				}
				c.Close()
				waitGone(t, ac, id)
				ac.Close()
			} else {
				expectClosed(t, c)
				c.Close()
			}
			p.expectReleased(t)
			assertServes(t, at, base)
		})
	}
}

// TestHelloCarryingDescriptors checks that descriptors attached to a valid
// hello are closed, not kept, and the session is opened.
func TestHelloCarryingDescriptors(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	base := fdCount(t)
	c := dialRaw(t, at)
	p := newProbe(t)
	hb := helloBody("with-fds")
	sendRaw(t, c, frame(honest(wire.TypeHello, 0, hb, 2), hb), unix.UnixRights(p.w, p.w))
	p.closeWrite()
	var w wire.Welcome
	if err := w.Unmarshal(recvType(t, c, wire.TypeWelcome).Body); err != nil || w.SessionID == 0 {
		t.Fatalf("welcome %+v: %v", w, err)
	}
	p.expectReleased(t)
	c.Close()
	assertServes(t, at, base)
}

// TestSilentPeer checks that a peer that connects and says nothing is
// closed after HelloTimeout, and does not keep others from being served
// meanwhile.
func TestSilentPeer(t *testing.T) {
	const helloTimeout = 300 * time.Millisecond
	at := startAgentT(t, nodeagent.Config{HelloTimeout: helloTimeout})
	base := fdCount(t)
	start := time.Now()
	silent := dialRaw(t, at)

	// While it waits, others join and are listed.
	c, id := join(t, at, "healthy", false)
	ac := adminDial(t, at)
	if ids := sessionIDs(t, ac); !slices.Contains(ids, id) {
		t.Fatalf("session %d not listed while a silent peer waits: %v", id, ids)
	}
	c.Close()
	waitGone(t, ac, id)
	ac.Close()

	recvFailure(t, silent, wire.TypeError, wire.CodeMalformed)
	expectClosed(t, silent)
	if took := time.Since(start); took < helloTimeout {
		t.Fatalf("silent peer closed after %v, before the hello timeout of %v", took, helloTimeout)
	}
	silent.Close()
	at.waitLog(t, "peer closed before hello", "reason", "timeout")
	assertServes(t, at, base)
}
