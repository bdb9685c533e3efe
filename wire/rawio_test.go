package wire

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// Recv waits in the poller and gives up at the read deadline with an error
// that says so, as a net.Conn read would.
func TestRecvDeadline(t *testing.T) {
	_, b := socketPair(t)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := b.Recv()
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("receive past the deadline: %v, want a timeout", err)
	}
}

// Recv that is waiting returns the message as soon as it is sent.
func TestRecvWaitsForMessage(t *testing.T) {
	a, b := socketPair(t)
	got := make(chan error, 1)
	go func() {
		m, err := recvBounded(t, b)
		if err == nil && m.Type != TypeCommit {
			err = errors.New("wrong message " + m.Type.String())
		}
		got <- err
	}()
	if err := a.Send(Msg{Header: Header{Type: TypeCommit}}); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// Send on a full socket waits in the poller until the peer reads, and
// loses nothing.
func TestSendWaitsWhileFull(t *testing.T) {
	a, b := socketPair(t)
	body := bytes.Repeat([]byte{7}, MaxBody)
	const n = 200 // far more than the socket buffers hold
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			if err := a.Send(Msg{Header: Header{Type: TypeResponse, Seq: uint32(i)}, Body: body}); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	for i := range n {
		m, err := recvBounded(t, b)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.Seq != uint32(i) || !bytes.Equal(m.Body, body) {
			t.Fatalf("message %d: seq %d, %d bytes", i, m.Seq, len(m.Body))
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// RecvWith puts the body in the caller's memory.
func TestRecvWith(t *testing.T) {
	a, b := socketPair(t)
	body := []byte("state bytes")
	if err := a.Send(Msg{Header: Header{Type: TypeResponse}, Body: body}); err != nil {
		t.Fatal(err)
	}
	arena := make([]byte, 64)
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := b.RecvWith(func(n int) []byte { return arena[:n] })
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Body, body) || &m.Body[0] != &arena[0] {
		t.Fatalf("body %q, in the arena: %v", m.Body, &m.Body[0] == &arena[0])
	}
}

// A Send to a peer that closed fails; it does not raise SIGPIPE.
func TestSendToClosedPeer(t *testing.T) {
	a, b := socketPair(t)
	b.Close()
	err := a.Send(Msg{Header: Header{Type: TypeCommit}})
	if err == nil {
		t.Fatal("send to a closed peer succeeded")
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("send to a closed peer: %v, want a *net.OpError", err)
	}
}
