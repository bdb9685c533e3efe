// Package podid tells the node agent which Kubernetes pod and container a
// peer process belongs to, from the kernel alone.
//
// The agent hands sockets (and through them, live client connections) to
// whoever asks over its unix socket, so "who is asking" is the security
// boundary: a process that could claim to be another pod's container
// could take that pod's listeners. Anything the peer says about itself —
// a pod name in a hello message, an environment variable, a file it
// wrote — is under its control. Its cgroup is not: the kubelet and the
// container runtime place every container's processes in a cgroup named
// after the pod UID and the container ID, and an unprivileged container
// cannot move itself out of it. So the agent takes the peer's pid (and
// pidfd) from SO_PEERCRED / SO_PEERPIDFD, reads /proc/<pid>/cgroup, and
// parses the pod UID and container ID out of the path the kernel reports.
// The caller then checks them against the Pod object from the API server
// (Identity.MatchesStatus against status.containerStatuses[].containerID).
//
// A pid alone is not an identity: between SO_PEERCRED and the read of
// /proc/<pid>/cgroup the peer can exit and its pid be given to a process
// in another pod. The Resolver therefore checks, after reading, that the
// peer's pidfd still names a live process: a live process keeps its pid,
// so the file read was that process's.
//
// Path forms understood (cgroup v2 "0::" lines, and v1 hierarchies where
// the pod-carrying ones must all agree):
//
//	cgroupfs driver  /kubepods/burstable/pod<uid>/<64-hex id>
//	                 /kubepods/pod<uid>/<id>            (Guaranteed)
//	                 /kubepods/besteffort/pod<uid>/crio-<id>
//	systemd driver   /kubepods.slice/kubepods-burstable.slice/
//	                   kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope
//	                   (also crio-<id>.scope, docker-<id>.scope)
//	containerd, systemd notation inside a service:
//	                 /system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>
//
// with any prefix (kind's /kubelet.slice/kubelet-kubepods.slice/..., a
// nested /docker/<id>/kubepods/...), with cgroups the container made below
// its own (crun's ".../crio-<id>.scope/container"), and with the "/../.."
// prefix the kernel writes when the agent runs in its own cgroup namespace
// (the default for containers on cgroup v2). In that last case the
// systemd forms keep their meaning (a slice name spells out its parents),
// while the cgroupfs form loses its /kubepods anchor; the parser then
// accepts a pod<uid> segment right after the ".." components (and a QoS
// class), which only the host can create. Running the agent in the host
// cgroup namespace avoids the question.
//
// The outermost pod segment wins: a container that may create cgroups
// below its own can only ever add segments after its true pod and
// container, never before them.
package podid
