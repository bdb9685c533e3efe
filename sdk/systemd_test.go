package handoff_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/nodeagent/admin"
)

// The agent under systemd, with systemd played by the test: it receives
// sd_notify datagrams on a NOTIFY_SOCKET of its own, keeps what the agent
// puts in its fd store (FDSTORE=1, FDNAME=, FDSTOREREMOVE=1) as systemd
// does, and starts the next agent with LISTEN_FDS, LISTEN_FDNAMES and
// LISTEN_PID, the stored descriptors from fd 3 on.

// fakeSystemd is the test playing systemd for one service.
type fakeSystemd struct {
	t    *testing.T
	path string
	conn *net.UnixConn

	mu    sync.Mutex
	store []storedFD // in the order they arrived
	ready int        // READY=1 datagrams received
	cond  *sync.Cond
}

type storedFD struct {
	name string
	f    *os.File
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{t: t, path: path, conn: conn}
	f.cond = sync.NewCond(&f.mu)
	done := make(chan struct{})
	go f.serve(done)
	t.Cleanup(func() {
		conn.Close()
		<-done
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, s := range f.store {
			s.f.Close()
		}
	})
	return f
}

// serve handles datagrams as systemd's notify socket does.
func (f *fakeSystemd) serve(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(253*4))
	for {
		n, oobn, _, _, err := f.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var fds []int
		if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, cm := range cms {
				if r, err := unix.ParseUnixRights(&cm); err == nil {
					fds = append(fds, r...)
				}
			}
		}
		kv := map[string]string{}
		for _, l := range strings.Split(string(buf[:n]), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				kv[k] = v
			}
		}
		f.mu.Lock()
		switch {
		case kv["FDSTORE"] == "1":
			for _, fd := range fds {
				f.store = append(f.store, storedFD{kv["FDNAME"], os.NewFile(uintptr(fd), kv["FDNAME"])})
			}
			fds = nil
		case kv["FDSTOREREMOVE"] == "1":
			kept := f.store[:0]
			for _, s := range f.store {
				if s.name == kv["FDNAME"] {
					s.f.Close()
				} else {
					kept = append(kept, s)
				}
			}
			f.store = kept
		}
		if kv["READY"] == "1" {
			f.ready++
		}
		f.cond.Broadcast()
		f.mu.Unlock()
		for _, fd := range fds {
			unix.Close(fd) // descriptors systemd would not keep
		}
	}
}

// count is how many stored descriptors have a name starting with prefix.
func (f *fakeSystemd) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.store {
		if strings.HasPrefix(s.name, prefix) {
			n++
		}
	}
	return n
}

// waitFor waits until cond holds of the store (bounded).
func (f *fakeSystemd) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(childTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("systemd's fd store: %s did not happen within %v (%s)", what, childTimeout, f.describe())
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

func (f *fakeSystemd) describe() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := map[string]int{}
	for _, s := range f.store {
		names[s.name]++
	}
	return fmt.Sprint(names)
}

// start starts an agent as systemd would: NOTIFY_SOCKET, and the stored
// descriptors as fds 3.. with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID
// (set by a shell that then execs the agent, so that it is the agent's
// pid).
func (f *fakeSystemd) start(t *testing.T, socket string) *child {
	t.Helper()
	f.mu.Lock()
	want := f.ready + 1
	var files []*os.File
	var names []string
	for _, s := range f.store {
		files = append(files, s.f)
		names = append(names, s.name)
	}
	f.mu.Unlock()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_CHILD=agent", "HANDOFF_SOCKET="+socket, "NOTIFY_SOCKET="+f.path)
	if len(files) > 0 {
		cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	cmd.ExtraFiles = files
	c := startCmd(t, "agent", cmd)
	c.line("READY", childTimeout)
	f.mu.Lock()
	defer f.mu.Unlock()
	deadline := time.AfterFunc(childTimeout, func() { f.mu.Lock(); f.ready = -1 << 30; f.cond.Broadcast(); f.mu.Unlock() })
	defer deadline.Stop()
	for f.ready >= 0 && f.ready < want {
		f.cond.Wait()
	}
	if f.ready < 0 {
		t.Fatal("the agent did not send READY=1")
	}
	return c
}

// TestSystemdKeepsStoreAcrossCrash: under systemd the agent keeps its
// listener and its fd store in systemd's fd store. The store holds a
// streamer's sockets when the agent is restarted (SIGTERM, as systemctl
// restart does) and then killed with SIGKILL; each next agent, started by
// systemd with what it kept, takes the same listener (no connect fails
// meanwhile), rebuilds the entry, and the next streamer claims every
// socket with every byte kept; the claim removes the entry from systemd's
// store.
func TestSystemdKeepsStoreAcrossCrash(t *testing.T) {
	const streams = 40
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	sd := newFakeSystemd(t)
	agent := sd.start(t, sock)
	sd.waitFor("the listener stored", func() bool { return sd.count("handoff-listener") == 1 })

	src := startStreamer(t, sock, false)
	by := startBystander(t, sock)
	l := startLoad(t, src.addr, streams)
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.WaitSession(int32(by.pid), childTimeout); err != nil {
		t.Fatal(err)
	}
	res := storeStreamer(t, ac, src)
	ac.Close()
	want := res.Listeners + res.Connections + res.Packets
	sd.waitFor("the entry stored", func() bool {
		return sd.count("handoff-meta-") == 1 && sd.count("handoff-fds-") >= want
	})

	dials := startDialLoop(t, sock)
	// systemctl restart: SIGTERM, and systemd starts the agent again with
	// what it kept. The agent stops without removing the socket path.
	if err := syscall.Kill(agent.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := agent.wait(childTimeout); err != nil {
		t.Fatalf("agent stopped with %v on SIGTERM", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the socket path after a stop under systemd: %v", err)
	}
	agent = sd.start(t, sock)
	ac, err = admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ac.Sessions(); err != nil || len(r.Stored) != 1 || r.Stored[0].Connections != res.Connections {
		t.Fatalf("after a restart the agent holds %+v (%v), want the stored entry", r, err)
	}
	ac.Close()
	if n := sd.count("handoff-meta-"); n != 1 {
		t.Fatalf("systemd's store has %d entry descriptions after a restart, want 1: %s", n, sd.describe())
	}

	// A crash: SIGKILL, and Restart= starts it again.
	if err := syscall.Kill(agent.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := agent.wait(childTimeout); !killedBySIGKILL(err) {
		t.Fatalf("agent ended with %v, want SIGKILL", err)
	}
	start := time.Now()
	agent = sd.start(t, sock)
	ac, err = admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	if _, err := ac.WaitSession(int32(by.pid), childTimeout); err != nil {
		t.Fatalf("the bystander did not join the restarted agent: %v", err)
	}
	rejoined := time.Since(start)
	r, err := ac.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Stored) != 1 || r.Stored[0].Name != "streamer" || r.Stored[0].Connections != res.Connections || r.Stored[0].Listeners != res.Listeners {
		t.Fatalf("the restarted agent holds %+v, want what was stored: %d listeners, %d connections", r.Stored, res.Listeners, res.Connections)
	}
	dials.check(t)

	next := startStreamer(t, sock, false)
	if next.imported != res.Connections || next.addr != src.addr {
		t.Fatalf("the next streamer imported %d connections on %s, want %d on %s", next.imported, next.addr, res.Connections, src.addr)
	}
	sd.waitFor("the claimed entry removed", func() bool {
		return sd.count("handoff-meta-") == 0 && sd.count("handoff-fds-") == 0 && sd.count("handoff-listener") == 1
	})
	l.advance(t)
	if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	}
	t.Logf("agent killed with SIGKILL under systemd holding %d stored connections: the restarted agent rebuilt them; a streamer rejoined it within %v of its start",
		res.Connections, rejoined.Round(time.Millisecond))
}
