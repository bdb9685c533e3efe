package podid

import (
	"errors"
	"strings"
)

// Container runtimes as they name themselves in a Pod's
// status.containerStatuses[].containerID ("<runtime>://<id>"), which is
// also how Identity.Runtime spells them.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
)

// Errors a caller can act on; they are wrapped with the pid and path seen.
var (
	// ErrNotInPod: the process's cgroup is not a Kubernetes pod's (a host
	// process, a plain docker container, a systemd service).
	ErrNotInPod = errors.New("process is not in a kubernetes pod")
	// ErrNotInContainer: the process sits in a pod's cgroup but in none of
	// its containers, such as CRI-O's conmon monitor; it is not the
	// workload and must not act for it.
	ErrNotInContainer = errors.New("process is in a pod but in none of its containers")
	// ErrAmbiguous: on cgroup v1, two hierarchies place the process in
	// different pods or containers. The kubelet never does that, so the
	// process was moved by someone with host privileges; refuse.
	ErrAmbiguous = errors.New("cgroup hierarchies disagree about the pod or container")
	// ErrProcessExited: the process is gone (or going), so its pid may
	// already name another process and nothing read through it counts.
	ErrProcessExited = errors.New("process exited")
)

// Identity is where the kernel says a process runs.
type Identity struct {
	// PodUID is the pod's metadata.uid, with dashes (the systemd driver
	// writes them as underscores; they are converted back).
	PodUID string
	// ContainerID is the runtime's 64-hex container id, without the
	// "<runtime>://" scheme the Pod status puts in front.
	ContainerID string
	// Runtime is RuntimeContainerd, RuntimeCRIO or RuntimeDocker when the
	// path says which (a prefix like "cri-containerd-"), else "" (the
	// cgroupfs driver's bare id names no runtime).
	Runtime string
	// CgroupPath is the path the identity was read from, as the reader's
	// cgroup namespace renders it, for logs and error messages.
	CgroupPath string
}

// MatchesStatus reports whether statusID, a Pod's
// status.containerStatuses[].containerID ("containerd://<id>",
// "cri-o://<id>", "docker://<id>"), names this identity's container. The
// id must be equal; the runtime must be equal too when the path named
// one. An empty status id (a container not started yet) never matches.
func (id Identity) MatchesStatus(statusID string) bool {
	scheme, cid, ok := strings.Cut(statusID, "://")
	if !ok || cid == "" || id.ContainerID == "" || scheme == "" {
		return false
	}
	if cid != id.ContainerID {
		return false
	}
	return id.Runtime == "" || id.Runtime == scheme
}
