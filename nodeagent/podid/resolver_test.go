package podid

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv makes the test binary a peer process for the real-cgroup
// tests: it waits until killed (or until its stdin closes).
const childEnv = "PODID_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a live peer process with a pidfd of our own.
type child struct {
	pid   int32
	pidfd int
	stop  func() // kills and reaps it; idempotent
}

func startChild(t *testing.T) child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	if _, err := cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	// The child is ours and unreaped until Wait, so its pid cannot be
	// reused before this pidfd pins it.
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("pidfd_open(%d): %v", cmd.Process.Pid, err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(func() {
		stop()
		unix.Close(pidfd)
	})
	return child{pid: int32(cmd.Process.Pid), pidfd: pidfd, stop: stop}
}

// hierarchy is a mounted cgroup hierarchy the test may write to.
type hierarchy struct {
	name  string // "cgroup2", or the v1 controllers, e.g. "pids"
	mount string
}

// cgroupHierarchies finds the cgroup v2 mount and one v1 hierarchy from
// mountinfo. The v1 one is pids, name=systemd or cpu: never memory,
// cpuset or devices, whose limits the test has no business changing for
// its children (and where this machine's own supervisor keeps its
// processes).
func cgroupHierarchies(t *testing.T) (v2, v1 *hierarchy) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v1rank := 99
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 {
			continue
		}
		mount, fstype := lf[4], rf[0]
		switch fstype {
		case "cgroup2":
			if v2 == nil {
				v2 = &hierarchy{name: "cgroup2", mount: mount}
			}
		case "cgroup":
			opts := strings.Split(rf[2], ",")
			if slices.Contains(opts, "memory") || slices.Contains(opts, "cpuset") || slices.Contains(opts, "devices") {
				continue
			}
			for r, want := range []string{"pids", "name=systemd", "cpu"} {
				if slices.Contains(opts, want) && r < v1rank {
					v1rank = r
					v1 = &hierarchy{name: want, mount: mount}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return v2, v1
}

func needRoot(t *testing.T) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("needs root: creates cgroups under /sys/fs/cgroup and moves processes into them (running as uid %d)", uid)
	}
}

// testRoot makes a cgroup of the test's own under h, so that the
// kubelet-shaped tree never collides with a real kubelet's on a machine
// that is also a node (it appears to the parser as a prefix, like kind's
// /kubelet.slice). It is removed at the end of the test.
func testRoot(t *testing.T, h *hierarchy) string {
	t.Helper()
	dir := filepath.Join(h.mount, "handoff-podid-test-"+strconv.Itoa(os.Getpid())+"-"+randHex(t, 4))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("no writable %s cgroup fs at %s: %v", h.name, h.mount, err)
	}
	t.Cleanup(func() { rmCgroup(t, dir) })
	return dir
}

// mkCgroups creates rel (several levels) under root, each level removed
// at cleanup, deepest first.
func mkCgroups(t *testing.T, root, rel string) string {
	t.Helper()
	dir := root
	for _, seg := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, seg)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("mkdir cgroup: %v", err)
		} else if err == nil {
			d := dir
			t.Cleanup(func() { rmCgroup(t, d) })
		}
	}
	return dir
}

// rmCgroup removes an empty cgroup. The kernel may report EBUSY for a
// moment after the last process was reaped, so it retries for a bounded
// time.
func rmCgroup(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			t.Errorf("remove cgroup %s: %v", dir, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func moveInto(t *testing.T, dir string, pid int32) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(int(pid))), 0); err != nil {
		t.Fatalf("move pid %d into cgroup %s: %v", pid, dir, err)
	}
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newUID makes a fresh pod UID (UUID form) and a container id, so that
// every run proves the values come from the kernel, not from a constant.
func newUID(t *testing.T) (uid, containerID string) {
	t.Helper()
	h := randHex(t, 16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32], randHex(t, 32)
}

// shape is a kubelet-like cgroup path with {uid}, {uid_} (systemd's
// spelling) and {id} to fill in.
type shape struct {
	name, path string
	runtime    string
	wantErr    error
}

var realShapes = []shape{
	{name: "systemd containerd", path: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope", runtime: RuntimeContainerd},
	{name: "cgroupfs", path: "kubepods/besteffort/pod{uid}/{id}"},
	{name: "cgroupfs guaranteed", path: "kubepods/pod{uid}/{id}"},
	{name: "containerd systemd notation", path: "system.slice/containerd.service/kubepods-burstable-pod{uid_}.slice:cri-containerd:{id}", runtime: RuntimeContainerd},
	{name: "cri-o with container sub-cgroup", path: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{id}.scope/container", runtime: RuntimeCRIO},
	{name: "kind docker", path: "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice/docker-{id}.scope", runtime: RuntimeDocker},
	{name: "crio conmon", path: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{id}.scope", wantErr: ErrNotInContainer},
	{name: "pod level", path: "kubepods/burstable/pod{uid}", wantErr: ErrNotInContainer},
	{name: "login session", path: "user.slice/user-0.slice/session-1.scope", wantErr: ErrNotInPod},
}

func (s shape) fill(uid, id string) string {
	return strings.NewReplacer("{uid_}", strings.ReplaceAll(uid, "-", "_"), "{uid}", uid, "{id}", id).Replace(s.path)
}

// selfInPod says whether this test process is itself in a pod (CI in a
// cluster), in which case a child moved in one v1 hierarchy only keeps
// that pod in the others.
func selfInPod(t *testing.T) bool {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	_, err = ParseProcCgroup(data)
	return !errors.Is(err, ErrNotInPod)
}

// TestResolveRealCgroups puts a real process into kubelet-shaped cgroups
// and resolves it through the kernel's /proc with its real pidfd.
func TestResolveRealCgroups(t *testing.T) {
	needRoot(t)
	v2, v1 := cgroupHierarchies(t)
	for _, tc := range []struct {
		kind string
		h    *hierarchy
	}{{"cgroup v2", v2}, {"cgroup v1", v1}} {
		t.Run(tc.kind, func(t *testing.T) {
			if tc.h == nil {
				t.Skipf("no %s hierarchy mounted on this machine (see /proc/self/mountinfo)", tc.kind)
			}
			if tc.h != v2 && selfInPod(t) {
				t.Skip("this test process runs in a pod: a child moved in one v1 hierarchy keeps that pod in the others")
			}
			r := NewResolver("")
			for _, s := range realShapes {
				t.Run(s.name, func(t *testing.T) {
					root := testRoot(t, tc.h)
					uid, id := newUID(t)
					rel := s.fill(uid, id)
					leaf := mkCgroups(t, root, rel)
					c := startChild(t)
					moveInto(t, leaf, c.pid)

					got, err := r.Resolve(c.pid, c.pidfd)
					if s.wantErr != nil {
						if !errors.Is(err, s.wantErr) {
							t.Fatalf("Resolve(%d) in %s = %+v, %v; want %v", c.pid, rel, got, err, s.wantErr)
						}
						for _, want := range []string{strconv.Itoa(int(c.pid)), rel} {
							if !strings.Contains(err.Error(), want) {
								t.Errorf("error %q does not name %q", err, want)
							}
						}
						return
					}
					if err != nil {
						t.Fatalf("Resolve(%d) in %s: %v", c.pid, rel, err)
					}
					if got.PodUID != uid || got.ContainerID != id || got.Runtime != s.runtime {
						t.Fatalf("Resolve(%d) in %s = %+v; want pod %s container %s runtime %q", c.pid, rel, got, uid, id, s.runtime)
					}
					if !strings.HasSuffix(got.CgroupPath, "/"+rel) {
						t.Errorf("CgroupPath %q does not end in %q", got.CgroupPath, rel)
					}
					scheme := s.runtime
					if scheme == "" {
						scheme = RuntimeContainerd
					}
					if !got.MatchesStatus(scheme + "://" + id) {
						t.Errorf("%+v does not match status id %s://%s", got, scheme, id)
					}
				})
			}
		})
	}
}

// TestResolveHierarchiesDisagree moves one process into different pods in
// the v2 and a v1 hierarchy (only possible with host privileges) and
// expects a refusal, and into the same container in both and expects an
// answer.
func TestResolveHierarchiesDisagree(t *testing.T) {
	needRoot(t)
	v2, v1 := cgroupHierarchies(t)
	if v2 == nil || v1 == nil {
		t.Skipf("needs cgroup v2 and a v1 hierarchy mounted together (hybrid); found v2=%v v1=%v", v2 != nil, v1 != nil)
	}
	if selfInPod(t) {
		t.Skip("this test process runs in a pod: its other v1 hierarchies would name that pod too")
	}
	sd := realShapes[0]
	r := NewResolver("")
	uidA, idA := newUID(t)
	uidB, idB := newUID(t)
	for _, tc := range []struct {
		name       string
		inV2, inV1 string
		wantErr    error
	}{
		{"same container", sd.fill(uidA, idA), sd.fill(uidA, idA), nil},
		{"different pods", sd.fill(uidA, idA), sd.fill(uidB, idB), ErrAmbiguous},
		{"different containers of one pod", sd.fill(uidA, idA), sd.fill(uidA, idB), ErrAmbiguous},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mkCgroups(t, testRoot(t, v2), tc.inV2)
			b := mkCgroups(t, testRoot(t, v1), tc.inV1)
			c := startChild(t)
			moveInto(t, a, c.pid)
			moveInto(t, b, c.pid)
			got, err := r.Resolve(c.pid, c.pidfd)
			if tc.wantErr == nil {
				if err != nil || got.PodUID != uidA || got.ContainerID != idA {
					t.Fatalf("Resolve = %+v, %v; want pod %s container %s", got, err, uidA, idA)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Resolve = %+v, %v; want %v", got, err, tc.wantErr)
			}
		})
	}
}

// TestResolveExitedProcess: once the process is gone its pidfd says so,
// whatever now sits at its pid.
func TestResolveExitedProcess(t *testing.T) {
	r := NewResolver("")
	c := startChild(t)
	// Alive, it resolves (to this test's own cgroup, which is a pod or not).
	if _, err := r.Resolve(c.pid, c.pidfd); err != nil && !errors.Is(err, ErrNotInPod) {
		t.Fatalf("live child %d: %v", c.pid, err)
	}
	c.stop()
	_, err := r.Resolve(c.pid, c.pidfd)
	if !errors.Is(err, ErrProcessExited) {
		t.Fatalf("Resolve of exited pid %d with its pidfd = %v; want %v", c.pid, err, ErrProcessExited)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(int(c.pid))) {
		t.Errorf("error %q does not name pid %d", err, c.pid)
	}
}

// TestResolveRecycledPid gives a dead peer's pid to a new process in
// another pod, the race a pid alone cannot see: the pid now resolves to
// the other pod, and only the pidfd tells them apart. It steers the
// kernel's next pid with ns_last_pid, retrying when another process on
// the machine forks first.
func TestResolveRecycledPid(t *testing.T) {
	needRoot(t)
	v2, v1 := cgroupHierarchies(t)
	h := v2
	if h == nil {
		h = v1
	}
	if h == nil {
		t.Skip("no writable cgroup hierarchy mounted (see /proc/self/mountinfo)")
	}
	const lastPid = "/proc/sys/kernel/ns_last_pid"
	root := testRoot(t, h)
	r := NewResolver("")
	uidA, idA := newUID(t)
	uidB, idB := newUID(t)
	podA := mkCgroups(t, root, realShapes[0].fill(uidA, idA))
	podB := mkCgroups(t, root, realShapes[0].fill(uidB, idB))

	a := startChild(t)
	moveInto(t, podA, a.pid)
	if got, err := r.Resolve(a.pid, a.pidfd); err != nil || got.PodUID != uidA {
		t.Fatalf("peer A before exit: %+v, %v", got, err)
	}
	a.stop()

	const tries = 100
	for i := 0; i < tries; i++ {
		if err := os.WriteFile(lastPid, []byte(strconv.Itoa(int(a.pid)-1)), 0); err != nil {
			// Root without CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE.
			t.Skipf("cannot steer pid allocation: write %s: %v", lastPid, err)
		}
		b := startChild(t)
		if b.pid != a.pid {
			b.stop()
			continue
		}
		moveInto(t, podB, b.pid)
		got, err := r.Resolve(a.pid, -1)
		if err != nil || got.PodUID != uidB || got.ContainerID != idB {
			t.Fatalf("pid %d alone should now resolve to pod %s (the new process): %+v, %v", a.pid, uidB, got, err)
		}
		got, err = r.Resolve(a.pid, a.pidfd)
		if !errors.Is(err, ErrProcessExited) {
			t.Fatalf("Resolve(%d, pidfd of the exited peer) = %+v, %v; want %v", a.pid, got, err, ErrProcessExited)
		}
		t.Logf("pid %d reused on try %d; the dead peer's pidfd refused it: %v", a.pid, i+1, err)
		return
	}
	t.Skipf("pid %d was not reused in %d tries: other processes on this machine took the next pid first", a.pid, tries)
}

func TestResolvePidfdOfAnotherProcess(t *testing.T) {
	r := NewResolver("")
	c := startChild(t)
	self := int32(os.Getpid())
	_, err := r.Resolve(self, c.pidfd)
	if err == nil || errors.Is(err, ErrNotInPod) || !strings.Contains(err.Error(), fmt.Sprintf("refers to pid %d, not %d", c.pid, self)) {
		t.Fatalf("Resolve(self %d, pidfd of child %d) = %v; want a pidfd mismatch", self, c.pid, err)
	}
}

func TestResolveBadArguments(t *testing.T) {
	r := NewResolver("")
	if _, err := r.Resolve(0, -1); err == nil {
		t.Error("pid 0 accepted")
	}
	// A descriptor that is not a pidfd.
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := r.Resolve(int32(os.Getpid()), int(f.Fd())); err == nil || errors.Is(err, ErrNotInPod) {
		t.Errorf("a plain file as pidfd: %v; want a pidfd error", err)
	}
}

func BenchmarkResolveSelf(b *testing.B) {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(pidfd)
	r := NewResolver("")
	pid := int32(os.Getpid())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve(pid, pidfd); err != nil && !errors.Is(err, ErrNotInPod) {
			b.Fatal(err)
		}
	}
}
