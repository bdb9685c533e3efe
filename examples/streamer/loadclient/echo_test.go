package loadclient

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

func TestEchoAgainstStreamer(t *testing.T) {
	addr := startStreamer(t, 1000, 100*time.Millisecond)
	e, err := StartEcho(ctxTimeout(t, 10*time.Second), EchoConfig{Addr: addr, Clients: 20, Interval: 2 * time.Millisecond, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	// Run until every client has had 20 round trips.
	deadline := time.Now().Add(20 * time.Second)
	for e.Snapshot().Answered < 20*20 {
		if time.Now().After(deadline) {
			t.Fatalf("too few round trips: %v", e.Snapshot())
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded condition wait
	}
	st, trips := e.Stop()
	if f := st.Failures(); len(f) > 0 || st.Alive != 20 {
		t.Fatalf("failures against a healthy server: %v %v", st, f)
	}
	if int64(len(trips)) != st.Answered {
		t.Fatalf("%d round trips recorded, %d answered", len(trips), st.Answered)
	}
	for _, r := range trips {
		if r.Sent <= 0 || r.Received < r.Sent || r.Duration() > echoTimeout {
			t.Fatalf("implausible round trip %+v", r)
		}
	}
}

// TestEchoDetectsRepeat: a server that answers one request twice (its
// sequence number stands still) is caught at once, and the failure ends
// that connection only.
func TestEchoDetectsRepeat(t *testing.T) {
	addr := fakeServer(t, func(_ string, c net.Conn) {
		io.WriteString(c, ResponseHeader)
		req := make([]byte, EchoRequestLen)
		for seq := 0; ; seq++ {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if seq == 3 {
				seq-- // answered twice
			}
			fmt.Fprintf(c, "%010d %s", seq, req)
		}
	})
	e, err := StartEcho(ctxTimeout(t, 10*time.Second), EchoConfig{Addr: addr, Clients: 2, Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Snapshot().Mismatches < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("repeat not detected: %v", e.Snapshot())
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded condition wait
	}
	st, trips := e.Stop()
	if st.Alive != 0 || st.Answered != 2*3 || len(st.Failures()) == 0 || len(trips) != 6 {
		t.Fatalf("stats %v, %d trips; want both connections failed after 3 good round trips", st, len(trips))
	}
}

func TestEchoStartFailsOnStreamServer(t *testing.T) {
	addr := fakeServer(t, func(_ string, c net.Conn) { io.WriteString(c, "HTTP/1.1 404 Not Found\r\n\r\n") })
	if _, err := StartEcho(ctxTimeout(t, 10*time.Second), EchoConfig{Addr: addr, Clients: 3}); err == nil {
		t.Fatal("StartEcho succeeded against a server that refuses /echo")
	}
}
