package podid

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Container cgroup prefixes: the systemd driver's "<prefix>-<id>.scope",
// CRI-O's "crio-<id>" under cgroupfs, and containerd's
// "<slice>:<prefix>:<id>" notation.
var runtimeByPrefix = map[string]string{
	"cri-containerd": RuntimeContainerd,
	"crio":           RuntimeCRIO,
	"docker":         RuntimeDocker,
}

// The kernel appends this to a v2 path whose cgroup was removed, which
// only happens once the process is exiting.
const deletedSuffix = " (deleted)"

// ParseCgroupPath reads the pod UID and container ID from one cgroup path
// as /proc/<pid>/cgroup shows it. It returns ErrNotInPod or
// ErrNotInContainer (wrapped, naming the path) when the path is not a pod
// container's.
func ParseCgroupPath(path string) (Identity, error) {
	id, err := parsePath(path)
	if err != nil {
		return Identity{}, err
	}
	return id, nil
}

// parsePath is ParseCgroupPath, except that with ErrNotInContainer it
// still returns the pod's UID, so that ParseProcCgroup can check that
// hierarchies agree.
func parsePath(path string) (Identity, error) {
	if strings.HasSuffix(path, deletedSuffix) {
		return Identity{}, fmt.Errorf("cgroup %q was removed: %w", path, ErrProcessExited)
	}
	if !strings.HasPrefix(path, "/") {
		return Identity{}, fmt.Errorf("cgroup %q is not an absolute path: %w", path, ErrNotInPod)
	}
	segs := strings.Split(path[1:], "/")
	for i, seg := range segs {
		uid, container, ok := podSegment(segs[:i], seg)
		if !ok {
			continue
		}
		// The first pod segment is the true one: anything after the
		// container's cgroup the container may have made itself.
		if container == "" && i+1 < len(segs) {
			container = segs[i+1]
		}
		cid, runtime, ok := containerSegment(container)
		if !ok {
			id := Identity{PodUID: uid, CgroupPath: path}
			why := ""
			if strings.HasPrefix(container, "crio-conmon-") {
				why = " (crio-conmon is CRI-O's monitor, not the container)"
			}
			return id, fmt.Errorf("cgroup %q: pod %s%s: %w", path, uid, why, ErrNotInContainer)
		}
		return Identity{
			PodUID:      uid,
			ContainerID: cid,
			Runtime:     runtime,
			CgroupPath:  path,
		}, nil
	}
	return Identity{}, fmt.Errorf("cgroup %q: %w", path, ErrNotInPod)
}

// podSegment reports whether seg, below parents, is a pod's cgroup, with
// the pod UID, and for containerd's "slice:prefix:id" notation (one
// segment holding both) the container segment spelled the usual way.
func podSegment(parents []string, seg string) (uid, container string, ok bool) {
	if strings.Contains(seg, ":") {
		parts := strings.Split(seg, ":")
		if len(parts) != 3 {
			return "", "", false
		}
		uid, ok := systemdPodUID(parts[0])
		if !ok {
			return "", "", false
		}
		return uid, parts[1] + "-" + parts[2], true
	}
	if uid, ok := systemdPodUID(seg); ok {
		return uid, "", true
	}
	// The cgroupfs driver's "pod<uid>" says nothing about its parents;
	// cgroupfsAnchored checks them.
	uid, ok = strings.CutPrefix(seg, "pod")
	if !ok || !isPodUID(uid) || !cgroupfsAnchored(parents) {
		return "", "", false
	}
	return uid, "", true
}

// systemdPodUID reads the systemd driver's pod slice,
// "[<prefix>-]kubepods[-<qos>]-pod<uid>.slice" with the UID's dashes
// written as underscores. A slice's name spells out its parents (this
// one lives in kubepods.slice/kubepods-<qos>.slice), so the segment alone
// says it is the kubelet's, whatever precedes it: kind's "kubelet-"
// prefix, a service, or "/..".
func systemdPodUID(seg string) (string, bool) {
	name, ok := strings.CutSuffix(seg, ".slice")
	if !ok {
		return "", false
	}
	i := strings.LastIndex(name, "-pod")
	if i < 0 {
		return "", false
	}
	parent, escaped := name[:i], name[i+len("-pod"):]
	parent = strings.TrimSuffix(parent, "-besteffort")
	parent = strings.TrimSuffix(parent, "-burstable")
	if parent != "kubepods" && !strings.HasSuffix(parent, "-kubepods") {
		return "", false
	}
	if strings.Contains(escaped, "-") { // systemd would have escaped it
		return "", false
	}
	uid := strings.ReplaceAll(escaped, "_", "-")
	return uid, isPodUID(uid)
}

// containerSegment reads a container's own cgroup: a runtime prefix
// (systemd driver, CRI-O under cgroupfs) or a bare id (containerd and
// docker under cgroupfs), then 64 lower-case hex digits. CRI-O's
// "crio-conmon-<id>" is not one, on purpose.
func containerSegment(seg string) (id, runtime string, ok bool) {
	seg = strings.TrimSuffix(seg, ".scope")
	for prefix, rt := range runtimeByPrefix {
		if rest, found := strings.CutPrefix(seg, prefix+"-"); found {
			seg, runtime = rest, rt
			break
		}
	}
	if len(seg) != 64 || !isLowerHex(seg) {
		return "", "", false
	}
	return seg, runtime, true
}

// isPodUID accepts what the kubelet uses as pod UIDs: UUIDs, and a static
// pod's md5 of its manifest (32 hex digits).
func isPodUID(s string) bool {
	switch len(s) {
	case 32:
		return isLowerHex(s)
	case 36:
		for i := 0; i < len(s); i++ {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if s[i] != '-' {
					return false
				}
			} else if !isLowerHex(s[i : i+1]) {
				return false
			}
		}
		return true
	}
	return false
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

// cgroupfsAnchored reports whether a cgroupfs pod segment sits where the
// kubelet puts pods: under kubepods, directly (Guaranteed) or under a QoS
// class. When the reader is in its own cgroup namespace the kernel
// replaces the common ancestors with "..", and kubepods may be among
// them; a pod segment right after the ".." (or after a QoS class) is then
// accepted, since only the host can create cgroups outside the reader's
// namespace.
func cgroupfsAnchored(parents []string) bool {
	up := 0
	for up < len(parents) && parents[up] == ".." {
		up++
	}
	rest := parents[up:]
	n := len(rest)
	switch {
	case n >= 1 && rest[n-1] == "kubepods":
		return true
	case n >= 2 && isQoS(rest[n-1]) && rest[n-2] == "kubepods":
		return true
	case up > 0 && (n == 0 || n == 1 && isQoS(rest[0])):
		return true
	}
	return false
}

func isQoS(seg string) bool { return seg == "burstable" || seg == "besteffort" }

// ParseProcCgroup reads the identity from the whole of a /proc/<pid>/cgroup
// file. On cgroup v2 that is the single "0::" line. On v1 (or hybrid)
// every hierarchy that places the process in a pod must name the same pod
// and container, else ErrAmbiguous; the path reported is the preferred
// hierarchy's: the unified one, then name=systemd, cpu, memory, pids.
// Hierarchies that place it in no pod (a controller the kubelet does not
// use) are ignored.
func ParseProcCgroup(data []byte) (Identity, error) {
	type entry struct {
		hierarchy, path string
		rank            int
		id              Identity
		err             error
	}
	var entries []*entry
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		// "hierarchy-ID:controller-list:path"; the path may itself hold
		// colons (containerd's systemd notation), so split twice only.
		hid, rest, ok1 := strings.Cut(line, ":")
		ctrls, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return Identity{}, fmt.Errorf("malformed cgroup line %q", line)
		}
		e := &entry{hierarchy: ctrls, path: path, rank: rank(hid, ctrls)}
		if hid == "0" && ctrls == "" {
			e.hierarchy = "cgroup2"
		}
		e.id, e.err = parsePath(path)
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return Identity{}, fmt.Errorf("no cgroup listed: %w", ErrNotInPod)
	}
	slices.SortStableFunc(entries, func(a, b *entry) int { return a.rank - b.rank })

	var full, pod *entry // preferred hierarchy with a container, with a pod
	for _, e := range entries {
		if errors.Is(e.err, ErrProcessExited) {
			return Identity{}, e.err
		}
		if e.id.PodUID == "" {
			continue
		}
		if pod == nil {
			pod = e
		} else if e.id.PodUID != pod.id.PodUID {
			return Identity{}, fmt.Errorf("hierarchy %s has %q, hierarchy %s has %q: %w",
				pod.hierarchy, pod.path, e.hierarchy, e.path, ErrAmbiguous)
		}
		if e.err != nil {
			continue
		}
		if full == nil {
			full = e
		} else if e.id.ContainerID != full.id.ContainerID {
			return Identity{}, fmt.Errorf("hierarchy %s has %q, hierarchy %s has %q: %w",
				full.hierarchy, full.path, e.hierarchy, e.path, ErrAmbiguous)
		}
	}
	switch {
	case full != nil:
		return full.id, nil
	case pod != nil:
		return Identity{}, pod.err
	}
	// On v1 the preferred hierarchy may well be an unused "/"; name
	// every distinct path so the message shows where the process is.
	var paths []string
	for _, e := range entries {
		if q := strconv.Quote(e.path); !slices.Contains(paths, q) {
			paths = append(paths, q)
		}
	}
	if len(paths) == 1 {
		return Identity{}, entries[0].err
	}
	return Identity{}, fmt.Errorf("cgroups %s: %w", strings.Join(paths, ", "), ErrNotInPod)
}

// rank orders hierarchies by how surely the kubelet manages them.
func rank(hid, ctrls string) int {
	if hid == "0" && ctrls == "" {
		return 0
	}
	best := 5
	for _, c := range strings.Split(ctrls, ",") {
		r := 5
		switch c {
		case "name=systemd":
			r = 1
		case "cpu":
			r = 2
		case "memory":
			r = 3
		case "pids":
			r = 4
		}
		best = min(best, r)
	}
	return best
}
