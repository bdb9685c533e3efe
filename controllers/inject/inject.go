// Package inject is the manager's mutating admission webhook for pods. A
// pod created with the label handoff.dev/enabled=true, or in a namespace
// with it, gets what config/samples/streamer.yaml writes by hand: the node
// agent's socket directory as a hostPath volume mounted into the
// application's container, HANDOFF_SOCKET, the socket's group among its
// supplementalGroups, and, for a hostNetwork pod of a DaemonSet, the
// readiness gate handoff.dev/migrated that the rollout controller opens.
//
// Inject is the pure decision and is idempotent: a pod may match both
// webhook entries (pod label and namespace label), and the API server may
// call the webhook again (reinvocationPolicy IfNeeded). A pod whose
// application container cannot be told is admitted unchanged, with an
// admission warning and an Event on its controller owner saying what to
// set: the webhook never blocks a pod.
package inject

import (
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
)

// SocketEnv is the variable the SDK reads the agent socket's path from.
const SocketEnv = "HANDOFF_SOCKET"

// VolumeName is the name of the injected hostPath volume, unless the pod
// already has a volume of that name.
const VolumeName = "handoff"

// What Inject can add, as listed in Result.Added and in the pod's
// v1alpha1.InjectedAnnotation.
const (
	AddedVolume = "volume"
	AddedMount  = "mount"
	AddedEnv    = "env"
	AddedGroup  = "group"
	AddedGate   = "gate"
)

// Config is what the webhook injects: where the node agent's socket is on
// every node, and the group that may connect to it.
type Config struct {
	// SocketDir is the host directory holding agent.sock (the agent's
	// and chart's nodeAgent.socketDir).
	SocketDir string
	// SocketGroup is the socket's group (nodeAgent.socketGroup).
	SocketGroup int64
}

// Socket is the agent socket's path, the value of HANDOFF_SOCKET.
func (c Config) Socket() string { return path.Join(path.Clean(c.SocketDir), "agent.sock") }

// Result says what Inject did to a pod.
type Result struct {
	// Container is the application's container.
	Container string
	// Added lists what was added (AddedVolume, ...), in that order;
	// empty when the pod already had everything.
	Added []string
}

// NotInjectableError says why the application's container cannot be
// told, and what to set on the pod template; Inject changed nothing.
type NotInjectableError struct {
	msg string
}

func (e *NotInjectableError) Error() string { return e.msg }

// Inject adds to pod what it lacks to reach the node agent, and returns
// what it added. It leaves alone what the pod already has: a hostPath
// volume of the socket directory (whatever its name), a mount at that
// path, the variable HANDOFF_SOCKET (whatever its value), the group, the
// gate. Calling it twice adds nothing the second time.
func Inject(pod *corev1.Pod, cfg Config) (Result, error) {
	i, err := workload.AppContainer(pod)
	if err != nil {
		return Result{}, &NotInjectableError{err.Error()}
	}
	dir := path.Clean(cfg.SocketDir)
	spec := &pod.Spec
	c := &spec.Containers[i]
	res := Result{Container: c.Name}

	vol := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool {
		return v.HostPath != nil && path.Clean(v.HostPath.Path) == dir
	})
	var volName string
	if vol >= 0 {
		volName = spec.Volumes[vol].Name
	} else {
		volName = freeVolumeName(spec.Volumes)
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: volName, VolumeSource: corev1.VolumeSource{
			// Directory, not DirectoryOrCreate: the agent creates it, and
			// until it has, kubelet retries rather than leave an empty
			// directory behind.
			HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: ptr(corev1.HostPathDirectory)},
		}})
		res.Added = append(res.Added, AddedVolume)
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return path.Clean(m.MountPath) == dir }) {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: volName, MountPath: dir})
		res.Added = append(res.Added, AddedMount)
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == SocketEnv }) {
		c.Env = append(c.Env, corev1.EnvVar{Name: SocketEnv, Value: cfg.Socket()})
		res.Added = append(res.Added, AddedEnv)
	}
	if spec.SecurityContext == nil {
		spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	if !slices.Contains(spec.SecurityContext.SupplementalGroups, cfg.SocketGroup) {
		spec.SecurityContext.SupplementalGroups = append(spec.SecurityContext.SupplementalGroups, cfg.SocketGroup)
		res.Added = append(res.Added, AddedGroup)
	}
	gate := corev1.PodConditionType(v1alpha1.ConditionMigrated)
	if workload.NeedsGate(pod) && !slices.ContainsFunc(spec.ReadinessGates, func(g corev1.PodReadinessGate) bool { return g.ConditionType == gate }) {
		spec.ReadinessGates = append(spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: gate})
		res.Added = append(res.Added, AddedGate)
	}
	if len(res.Added) > 0 {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[v1alpha1.InjectedAnnotation] = res.Container + ": " + strings.Join(res.Added, ",")
	}
	return res, nil
}

// freeVolumeName is VolumeName, or VolumeName-2, -3... if the pod already
// uses it for another volume.
func freeVolumeName(vols []corev1.Volume) string {
	for n := 1; ; n++ {
		name := VolumeName
		if n > 1 {
			name = fmt.Sprintf("%s-%d", VolumeName, n)
		}
		if !slices.ContainsFunc(vols, func(v corev1.Volume) bool { return v.Name == name }) {
			return name
		}
	}
}

func ptr[T any](v T) *T { return &v }
