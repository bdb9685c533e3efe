package integration

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cgroup2Mount finds the cgroup v2 hierarchy (on a hybrid host it is not at
// /sys/fs/cgroup but below it), or "" if there is none.
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if fs := strings.Fields(pre); len(fs) >= 5 && fs[3] == "/" {
			return fs[4]
		}
	}
	return ""
}

// needCgroups skips, saying why, unless this process may create cgroup v2
// groups: the node agent learns a process's pod and container from its
// cgroup, so the tests place their "containers" in real ones.
func needCgroups(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test processes are placed in real kubelet-shaped cgroups, which only root may create (CI runs as root)")
	}
	mnt := cgroup2Mount()
	if mnt == "" {
		t.Skip("needs a cgroup v2 hierarchy (none in /proc/self/mountinfo) to place the test processes in kubelet-shaped cgroups")
	}
	return mnt
}

// containerCgroup creates the cgroup kubelet's systemd driver gives a
// containerd container of a BestEffort pod, and removes it at cleanup. It
// returns the directory and the container id (64 hex).
func containerCgroup(t *testing.T, mnt, podUID string) (string, string) {
	t.Helper()
	id := randomContainerID(t)
	podSlice := fmt.Sprintf("kubepods-besteffort-pod%s.slice", strings.ReplaceAll(podUID, "-", "_"))
	rel := filepath.Join("kubepods.slice", "kubepods-besteffort.slice", podSlice, "cri-containerd-"+id+".scope")
	dir := filepath.Join(mnt, "handoff-itest", rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() {
		// Remove leaf first; a cgroup with live processes cannot go, so
		// the processes' own cleanups run before this one (registered
		// later, run earlier).
		for d := dir; d != mnt && strings.HasPrefix(d, filepath.Join(mnt, "handoff-itest")); d = filepath.Dir(d) {
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
				if strings.Contains(err.Error(), "directory not empty") || strings.Contains(err.Error(), "busy") {
					return // a sibling still lives; its own cleanup removes the parents
				}
				t.Errorf("remove cgroup %s: %v", d, err)
				return
			}
		}
	})
	return dir, id
}

// randomContainerID returns a containerd container id: 64 hex digits.
func randomContainerID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
