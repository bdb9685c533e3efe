package handoff_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/test/support/testapp"
	"github.com/handoff-dev/handoff/wire"
)

// appConn is a client connection to the test app.
type appConn struct {
	c  net.Conn
	id uint64
}

func dialApp(t *testing.T, network, addr string, id uint64) *appConn {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], id)
	if _, err := c.Write(b[:]); err != nil {
		t.Fatal(err)
	}
	return &appConn{c: c, id: id}
}

func (a *appConn) ping(t *testing.T) testapp.Reply {
	t.Helper()
	a.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := a.c.Write([]byte{'p'}); err != nil {
		t.Fatalf("conn %d: write: %v", a.id, err)
	}
	b := make([]byte, testapp.ReplyLen)
	if _, err := io.ReadFull(a.c, b); err != nil {
		t.Fatalf("conn %d: read reply: %v", a.id, err)
	}
	return testapp.DecodeReply(b)
}

type app struct {
	*child
	pid           int
	tcp, udp, uds string
	imported      int
}

func startApp(t *testing.T, ta *testAgent, name, unixPath string, standby bool, env ...string) *app {
	t.Helper()
	env = append(env, "HANDOFF_SOCKET="+ta.socket, "HANDOFF_NAME="+name, "TCP=127.0.0.1:0", "UDP=127.0.0.1:0", "UNIX="+unixPath)
	if standby {
		env = append(env, "STANDBY=1")
	}
	c := startChild(t, "testapp", env...)
	a := &app{child: c, pid: c.cmd.Process.Pid}
	if standby {
		return a
	}
	a.waitReady(t)
	return a
}

func (a *app) waitReady(t *testing.T) {
	t.Helper()
	l := a.line("READY", 30*time.Second)
	a.tcp, a.udp, a.uds = field(l, "tcp"), field(l, "udp"), field(l, "unix")
	a.imported, _ = strconv.Atoi(field(l, "imported"))
}

func TestMigrateFDPath(t *testing.T) {
	cases := []struct {
		name  string
		conns int
		state int
		vary  bool
	}{
		{"listeners and empty states", 4, 0, false},
		{"253 connections", 253, 100, false},
		{"254 connections", 254, 100, false},
		{"1000 connections with varied states", 1000, 300, true},
		{"states of 3 MiB", 3, 3 << 20, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ta := startAgent(t)
			uds := filepath.Join(t.TempDir(), "app.sock")
			env := []string{"STATE_SIZE=" + strconv.Itoa(tc.state)}
			if tc.vary {
				env = append(env, "STATE_VARY=1")
			}
			wantSize := func(id uint64) int {
				if tc.vary {
					return int(id % uint64(tc.state+1))
				}
				return tc.state
			}
			a := startApp(t, ta, "app", uds, false, env...)
			sa := ta.join(t, a.pid)
			conns := make([]*appConn, tc.conns)
			for i := range conns {
				network, addr := "tcp", a.tcp
				if i%2 == 1 {
					network, addr = "unix", a.uds
				}
				conns[i] = dialApp(t, network, addr, uint64(i+1))
			}
			for _, c := range conns {
				r := c.ping(t)
				if r.PID != uint32(a.pid) || r.Count != 1 || !r.StateOK {
					t.Fatalf("before migration conn %d: %+v", c.id, r)
				}
			}

			b := startApp(t, ta, "app", uds, true, env...)
			sb := ta.join(t, b.pid)
			res, err := ta.Migrate(sa.ID, sb.ID, wire.MoveAll, 30*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Phase != nodeagent.PhaseCompleted {
				t.Fatalf("migration %s: %s: %s", res.Phase, res.Reason, res.Message)
			}
			if res.Connections != tc.conns || res.Listeners != 2 || res.Packets != 1 {
				t.Fatalf("moved %d connections, %d listeners, %d packet sockets; want %d, 2, 1", res.Connections, res.Listeners, res.Packets, tc.conns)
			}
			wantBatches := (tc.conns + 3 + wire.MaxFDs - 1) / wire.MaxFDs
			if res.Batches < wantBatches {
				t.Fatalf("%d batches for %d descriptors", res.Batches, tc.conns+3)
			}
			t.Logf("moved %d descriptors in %d batches, %d state bytes, pause %v", tc.conns+3, res.Batches, res.StateBytes, res.Pause())
			b.waitReady(t)
			if b.imported != tc.conns || b.tcp != a.tcp || b.udp != a.udp {
				t.Fatalf("target imported %d (want %d), tcp %s udp %s (want %s %s)", b.imported, tc.conns, b.tcp, b.udp, a.tcp, a.udp)
			}
			if l := a.line("EXIT", 30*time.Second); l != "EXIT ok" {
				t.Fatalf("source: %s", l)
			}
			for _, c := range conns {
				r := c.ping(t)
				if r.PID != uint32(b.pid) || r.Count != 2 || !r.StateOK || int(r.StateLen) != wantSize(c.id) || r.ID != c.id {
					t.Fatalf("after migration conn %d: %+v (want pid %d, count 2, state %d bytes intact)", c.id, r, b.pid, wantSize(c.id))
				}
			}
			for i, nw := range []string{"tcp", "unix"} {
				addr := map[string]string{"tcp": a.tcp, "unix": a.uds}[nw]
				r := dialApp(t, nw, addr, uint64(100000+i)).ping(t)
				if r.PID != uint32(b.pid) {
					t.Fatalf("new %s connection served by %d, want the target %d", nw, r.PID, b.pid)
				}
			}
			uc, err := net.Dial("udp", a.udp)
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			uc.SetDeadline(time.Now().Add(10 * time.Second))
			uc.Write([]byte("hello"))
			buf := make([]byte, 100)
			n, err := uc.Read(buf)
			if err != nil || !strings.HasPrefix(string(buf[:n]), fmt.Sprintf("%d:hello", b.pid)) {
				t.Fatalf("udp answer %q, %v; want it from the target %d", buf[:n], err, b.pid)
			}
		})
	}
}

// TestBlockedFreezeHook migrates an app whose Freeze hook of one
// connection blocks until most of the other hooks have started: the
// other connections must be frozen meanwhile, not behind it (the export
// adds workers when its first one is held up in a hook).
func TestBlockedFreezeHook(t *testing.T) {
	const conns = 100
	ta := startAgent(t)
	uds := filepath.Join(t.TempDir(), "app.sock")
	env := []string{"HOLD_FREEZE_ID=1", "HOLD_UNTIL=" + strconv.Itoa(conns*3/4)}
	a := startApp(t, ta, "app", uds, false, env...)
	sa := ta.join(t, a.pid)
	cs := make([]*appConn, conns)
	for i := range cs {
		cs[i] = dialApp(t, "tcp", a.tcp, uint64(i+1))
		if r := cs[i].ping(t); r.PID != uint32(a.pid) {
			t.Fatalf("conn %d served by %d before the migration", i+1, r.PID)
		}
	}
	b := startApp(t, ta, "app", uds, true, env...)
	sb := ta.join(t, b.pid)
	res, err := ta.Migrate(sa.ID, sb.ID, wire.MoveAll, 30*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Phase != nodeagent.PhaseCompleted || res.Connections != conns {
		t.Fatalf("migration %s with %d connections: %s: %s", res.Phase, res.Connections, res.Reason, res.Message)
	}
	b.waitReady(t)
	for _, c := range cs {
		if r := c.ping(t); r.PID != uint32(b.pid) || r.Count != 2 || !r.StateOK {
			t.Fatalf("after the migration conn %d: %+v", c.id, r)
		}
	}
}
