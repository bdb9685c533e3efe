// Package cluster runs handoff on a real Kubernetes cluster, the way a user
// does: it installs the chart with helm, runs the example streamer in pods,
// streams from this host with verifying clients, applies Migrations with
// kubectl and checks what the clients saw.
//
// It takes any cluster. make test-e2e brings one up (kind where Docker
// runs, else a single-node cluster from binaries, as root), builds and
// loads the images and sets:
//
//	KUBECONFIG                  the cluster
//	HANDOFF_E2E_HELM            a helm v3 binary
//	HANDOFF_E2E_KUBECTL         a kubectl binary
//	HANDOFF_E2E_IMAGE_REPO      the handoff image (manager, nodeagent)...
//	HANDOFF_E2E_IMAGE_TAG       ...and its tag
//	HANDOFF_E2E_IMAGE_NEXT_TAG  a second tag of it, which the agent
//	                            upgrade test rolls the chart to
//	HANDOFF_E2E_STREAMER_IMAGE  the example streamer's image
//	HANDOFF_E2E_STREAMER_NEXT   a second tag of it, for the in-place update
//	HANDOFF_E2E_STREAMER_MORE   two more tags of it, space-separated, for
//	                            repeated in-place updates
//	HANDOFF_E2E_ARTIFACTS       where to write dumps when a test fails
//
// The tests reach hostNetwork pods at the node's InternalIP and other pods
// at their pod IP, so this host must route to both.
package cluster

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	handoffv1 "github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
)

const (
	release       = "handoff"
	systemNS      = "handoff-system"
	streamerName  = "streamer"
	podPort       = 8080
	clientStreams = 60
	// socketGroup is the chart's nodeAgent.socketGroup here: a group of
	// its own rather than root's, which the application pods join.
	socketGroup = 2750
)

// settings are the suite's inputs, from the environment.
type settings struct {
	kubectl, helm            string
	imageRepo, imageTag      string
	imageNextTag             string
	streamer, streamerNext   string
	artifacts, chart, config string
}

func loadSettings(t *testing.T) settings {
	t.Helper()
	s := settings{
		kubectl: os.Getenv("HANDOFF_E2E_KUBECTL"), helm: os.Getenv("HANDOFF_E2E_HELM"),
		imageRepo: os.Getenv("HANDOFF_E2E_IMAGE_REPO"), imageTag: os.Getenv("HANDOFF_E2E_IMAGE_TAG"),
		imageNextTag: os.Getenv("HANDOFF_E2E_IMAGE_NEXT_TAG"),
		streamer:     os.Getenv("HANDOFF_E2E_STREAMER_IMAGE"), streamerNext: os.Getenv("HANDOFF_E2E_STREAMER_NEXT"),
		artifacts: os.Getenv("HANDOFF_E2E_ARTIFACTS"),
	}
	if s.kubectl == "" && os.Getenv("KUBECONFIG") == "" {
		t.Skip("no cluster given: make test-e2e brings one up and sets KUBECONFIG and HANDOFF_E2E_* (see the package doc)")
	}
	var missing []string
	for k, v := range map[string]string{
		"KUBECONFIG": os.Getenv("KUBECONFIG"), "HANDOFF_E2E_KUBECTL": s.kubectl, "HANDOFF_E2E_HELM": s.helm,
		"HANDOFF_E2E_IMAGE_REPO": s.imageRepo, "HANDOFF_E2E_IMAGE_TAG": s.imageTag, "HANDOFF_E2E_IMAGE_NEXT_TAG": s.imageNextTag,
		"HANDOFF_E2E_STREAMER_IMAGE": s.streamer, "HANDOFF_E2E_STREAMER_NEXT": s.streamerNext,
	} {
		if v == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("a cluster is given but these are not set: %s (see the package doc)", strings.Join(missing, ", "))
	}
	if s.artifacts == "" {
		s.artifacts = t.TempDir()
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	s.chart = filepath.Join(root, "charts", "handoff")
	return s
}

// suite is what every test of the cluster shares.
type suite struct {
	settings
	c      client.Client
	nodeIP string

	mu      sync.Mutex
	timings []string
}

func (s *suite) timing(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timings = append(s.timings, fmt.Sprintf(format, args...))
}

// TestCluster installs the chart and runs every story on the cluster, in
// order: they share the installation.
func TestCluster(t *testing.T) {
	st := loadSettings(t)
	s := &suite{settings: st}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := handoffv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	rc, err := config.GetConfig()
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	if s.c, err = client.New(rc, client.Options{Scheme: scheme}); err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() {
		t.Log("timings:")
		for _, l := range s.timings {
			t.Log("  " + l)
		}
	})

	s.install(t)
	t.Run("TwoPods", s.testTwoPods)
	t.Run("InPlace", s.testInPlace)
	t.Run("TargetKilled", s.testTargetKilled)
	t.Run("Refused", s.testRefused)
	t.Run("AdminOnlyFromAgent", s.testAdminOnlyFromAgent)
	t.Run("DaemonSetSurge", s.testDaemonSetSurge)
	t.Run("DaemonSetSurgeCrash", s.testDaemonSetSurgeCrash)
	t.Run("StatefulSetInPlace", s.testStatefulSetInPlace)
	t.Run("StatefulSetNotImageOnly", s.testStatefulSetNotImageOnly)
	t.Run("DeploymentInPlace", s.testDeploymentInPlace)
	t.Run("DaemonSetInPlace", s.testDaemonSetInPlace)
	t.Run("InPlaceRepeated", s.testInPlaceRepeated)
	t.Run("AgentUpgrade", s.testAgentUpgrade)
	t.Run("AgentPodDeleted", s.testAgentPodDeleted)
	// Last: it stops the manager for a while.
	t.Run("WebhookDown", s.testWebhookDown)
	if !t.Failed() {
		s.uninstall(t)
	}
}

// install puts the chart in with helm and waits for the manager and one
// ready agent per node.
func (s *suite) install(t *testing.T) {
	ctx := context.Background()
	var nodes corev1.NodeList
	if err := s.c.List(ctx, &nodes); err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	if len(nodes.Items) == 0 {
		t.Fatal("the cluster has no nodes")
	}
	for _, a := range nodes.Items[0].Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			s.nodeIP = a.Address
		}
	}
	if s.nodeIP == "" {
		t.Fatalf("node %s has no InternalIP", nodes.Items[0].Name)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.dump(t, "install", "")
		}
	})
	start := time.Now()
	runID := strconv.FormatInt(start.UnixNano(), 10)
	s.run(t, 6*time.Minute, s.helm, "upgrade", "--install", release, s.chart,
		"--namespace", systemNS, "--create-namespace",
		"--set", "image.repository="+s.imageRepo, "--set", "image.tag="+s.imageTag,
		"--set", fmt.Sprintf("nodeAgent.socketGroup=%d", socketGroup),
		// A new value each run restarts the manager and the agents: the
		// images keep their tag when rebuilt, and a release left by a
		// failed run would otherwise keep the old binaries running.
		"--set-string", "manager.podAnnotations.e2e-run="+runID, "--set-string", "nodeAgent.podAnnotations.e2e-run="+runID,
		"--wait", "--timeout", "5m")
	waitFor(t, "the manager Deployment available and one ready agent on each of the "+strconv.Itoa(len(nodes.Items))+" nodes", 3*time.Minute, func() (bool, string, error) {
		var deps appsv1.DeploymentList
		if err := s.c.List(ctx, &deps, client.InNamespace(systemNS), client.MatchingLabels{"app.kubernetes.io/instance": release, "app.kubernetes.io/component": "manager"}); err != nil {
			return false, "", err
		}
		var dss appsv1.DaemonSetList
		if err := s.c.List(ctx, &dss, client.InNamespace(systemNS), client.MatchingLabels{"app.kubernetes.io/instance": release, "app.kubernetes.io/component": "nodeagent"}); err != nil {
			return false, "", err
		}
		if len(deps.Items) != 1 || len(dss.Items) != 1 {
			return false, fmt.Sprintf("%d manager Deployments, %d agent DaemonSets", len(deps.Items), len(dss.Items)), nil
		}
		d, ds := deps.Items[0], dss.Items[0]
		state := fmt.Sprintf("manager %d/%d available, agents %d/%d ready", d.Status.AvailableReplicas, ptr.Deref(d.Spec.Replicas, 1), ds.Status.NumberReady, len(nodes.Items))
		return d.Status.AvailableReplicas >= 1 && int(ds.Status.NumberReady) == len(nodes.Items) && ds.Status.DesiredNumberScheduled == int32(len(nodes.Items)), state, nil
	})
	s.timing("chart install (helm --wait) to manager and agents ready: %v", time.Since(start).Round(time.Millisecond))
	t.Logf("installed %s in %v; node %s at %s", release, time.Since(start).Round(time.Millisecond), nodes.Items[0].Name, s.nodeIP)
}

// uninstall removes the release and checks that the CRD stays (crds.keep).
func (s *suite) uninstall(t *testing.T) {
	s.run(t, 3*time.Minute, s.helm, "uninstall", release, "--namespace", systemNS, "--wait", "--timeout", "2m")
	out := s.run(t, time.Minute, s.kubectl, "get", "crd", "migrations.handoff.dev", "-o", "name")
	if !strings.Contains(out, "migrations.handoff.dev") {
		t.Errorf("after helm uninstall the CRD is gone (%q); crds.keep should keep it", out)
	}
}

// testTwoPods moves every socket between two hostNetwork streamer pods
// under live clients, then back to a third pod.
func (s *suite) testTwoPods(t *testing.T) {
	ns := s.namespace(t, "two-pods")
	port, addr, _ := s.hostPair(t, ns, "streamer-a", "streamer-b", podOpts{})

	lc := s.startClients(t, addr, clientStreams)
	for i, hop := range [][2]string{{"streamer-a", "streamer-b"}, {"streamer-b", "streamer-c"}} {
		if i > 0 {
			s.createPod(t, streamerPod(ns, hop[1], s.streamer, podOpts{hostNetwork: true, port: port, standby: true}))
			s.waitPodRunning(t, ns, hop[1])
		}
		name := hop[0] + "-to-" + hop[1]
		lc.ResetStall()
		m := s.migrate(t, ns, name, fmt.Sprintf(`
spec:
  source: {pod: %s, container: %s}
  target: {pod: %s, container: %s}
  timeout: 60s`, hop[0], streamerName, hop[1], streamerName))
		wantCompleted(t, m, clientStreams)
		// Readiness follows the handoff: the target serves now.
		s.waitPodReady(t, ns, hop[1])
		// The source's streamer exits once its sockets moved; the
		// controller then deletes its pod (sourcePolicy Delete).
		s.waitPodGone(t, ns, hop[0])
		s.checkClients(t, lc, name)
	}
	s.stopClients(t, lc)
}

// testInPlace updates the image of a pod-network streamer in place: the
// agent holds the sockets while kubelet restarts the container.
func (s *suite) testInPlace(t *testing.T) {
	ns := s.namespace(t, "in-place")
	s.createPod(t, streamerPod(ns, "streamer", s.streamer, podOpts{port: podPort, restartAlways: true}))
	pod := s.waitPodReady(t, ns, "streamer")
	before := containerStatus(t, pod)
	addr := net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(podPort))
	waitServing(t, addr)
	lc := s.startClients(t, addr, clientStreams)
	lc.ResetStall()
	m := s.migrate(t, ns, "update", fmt.Sprintf(`
spec:
  source: {pod: streamer, container: %s}
  target: {pod: streamer, container: %s, image: %q}
  timeout: 90s`, streamerName, streamerName, s.streamerNext))
	wantCompleted(t, m, clientStreams)
	var after corev1.ContainerStatus
	waitFor(t, "the restarted container running "+s.streamerNext, 2*time.Minute, func() (bool, string, error) {
		var p corev1.Pod
		if err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "streamer"}, &p); err != nil {
			return false, "", err
		}
		// The spec, not the status: the status names the image by
		// whichever of its tags the runtime finds first, and both tags
		// are one image here.
		image := ""
		for _, c := range p.Spec.Containers {
			if c.Name == streamerName {
				image = c.Image
			}
		}
		after = containerStatus(t, &p)
		return after.ContainerID != before.ContainerID && after.State.Running != nil && image == s.streamerNext,
			fmt.Sprintf("container %s (spec image %s) restarts %d", after.ContainerID, image, after.RestartCount), nil
	})
	if m.Status.SourceContainerID == "" || m.Status.SourceContainerID == m.Status.TargetContainerID {
		t.Errorf("status names source container %q and target container %q; want two different containers", m.Status.SourceContainerID, m.Status.TargetContainerID)
	}
	if after.RestartCount != before.RestartCount+1 {
		t.Errorf("restart count %d → %d; want exactly one restart", before.RestartCount, after.RestartCount)
	}
	s.waitPodReady(t, ns, "streamer")
	s.checkClients(t, lc, "in-place update")
	s.stopClients(t, lc)
}

// hostPair starts a hostNetwork streamer pod, serving on a free port of
// the node, and a second one in standby on the same port, with targetOpts
// besides. It returns the port, the address clients use and the standby
// pod once it runs.
func (s *suite) hostPair(t *testing.T, ns, source, target string, targetOpts podOpts) (int, string, *corev1.Pod) {
	t.Helper()
	port := freePort(t)
	addr := net.JoinHostPort(s.nodeIP, strconv.Itoa(port))
	s.createPod(t, streamerPod(ns, source, s.streamer, podOpts{hostNetwork: true, port: port}))
	s.waitPodReady(t, ns, source)
	waitServing(t, addr)
	targetOpts.hostNetwork, targetOpts.port, targetOpts.standby = true, port, true
	s.createPod(t, streamerPod(ns, target, s.streamer, targetOpts))
	return port, addr, s.waitPodRunning(t, ns, target)
}

// testTargetKilled kills the target's container while it warms up with
// every socket received: the migration fails and the source serves every
// client on, and accepts new ones.
func (s *suite) testTargetKilled(t *testing.T) {
	ns := s.namespace(t, "target-killed")
	_, addr, target := s.hostPair(t, ns, "source", "target", podOpts{warmup: 10 * time.Minute})
	lc := s.startClients(t, addr, clientStreams)

	s.apply(t, ns, "doomed", fmt.Sprintf(`
spec:
  source: {pod: source, container: %s}
  target: {pod: target, container: %s}
  timeout: 5m`, streamerName, streamerName))
	// The agent says it waits for the target once the source exported
	// everything: the target holds every socket and is warming up.
	waitFor(t, "the target holding every socket", 2*time.Minute, func() (bool, string, error) {
		m, err := s.getMigration(ns, "doomed")
		if err != nil {
			return false, "", err
		}
		c := meta.FindStatusCondition(m.Status.Conditions, handoffv1.ConditionTransferred)
		if c == nil {
			return false, string(m.Status.Phase), nil
		}
		if m.Status.Phase == handoffv1.PhaseCompleted || m.Status.Phase == handoffv1.PhaseFailed {
			return false, "", fmt.Errorf("migration ended %s before the target was killed: %s", m.Status.Phase, m.Status.Message)
		}
		return strings.Contains(c.Message, "waiting for the target"), c.Reason + ": " + c.Message, nil
	})
	how := s.killContainer(t, target)
	t.Logf("killed the target: %s", how)
	m := s.waitMigration(t, ns, "doomed", time.Now(), "target killed")
	if m.Status.Phase != handoffv1.PhaseFailed {
		t.Fatalf("migration %s (%s); want Failed after the target was killed", m.Status.Phase, m.Status.Message)
	}
	t.Logf("failed as it should: %s", m.Status.Message)
	// The source was not deleted and serves every stream on.
	var src corev1.Pod
	if err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "source"}, &src); err != nil {
		t.Fatalf("source pod after the failed migration: %v", err)
	}
	if src.DeletionTimestamp != nil {
		t.Fatal("the source pod is being deleted after a failed migration")
	}
	s.checkClients(t, lc, "target killed")
	fresh := s.startClients(t, addr, 4)
	s.checkClients(t, fresh, "new clients after the failure")
	s.stopClients(t, fresh)
	s.stopClients(t, lc)
}

// testRefused applies Migrations the controller must refuse.
func (s *suite) testRefused(t *testing.T) {
	ns := s.namespace(t, "refused")
	s.createPod(t, streamerPod(ns, "pod-a", s.streamer, podOpts{port: podPort}))
	s.createPod(t, streamerPod(ns, "pod-b", s.streamer, podOpts{port: podPort, standby: true}))
	a := s.waitPodReady(t, ns, "pod-a")
	s.waitPodRunning(t, ns, "pod-b")
	addr := net.JoinHostPort(a.Status.PodIP, strconv.Itoa(podPort))
	waitServing(t, addr)
	lc := s.startClients(t, addr, 8)

	for _, c := range []struct {
		name, spec, reason, says string
	}{
		{"other-netns", `
spec:
  source: {pod: pod-a, container: streamer}
  target: {pod: pod-b, container: streamer}`, handoffv1.ReasonNetworkNamespaceNotShared, "network"},
		{"missing-target", `
spec:
  source: {pod: pod-a, container: streamer}
  target: {pod: no-such-pod, container: streamer}`, handoffv1.ReasonTargetPodNotFound, "no-such-pod"},
	} {
		m := s.migrate(t, ns, c.name, c.spec)
		ready := meta.FindStatusCondition(m.Status.Conditions, handoffv1.ConditionReady)
		if m.Status.Phase != handoffv1.PhaseFailed || ready == nil || ready.Reason != c.reason || !strings.Contains(m.Status.Message, c.says) {
			t.Errorf("%s: phase %s, Ready %+v, message %q; want Failed with reason %s and a message that names %q", c.name, m.Status.Phase, ready, m.Status.Message, c.reason, c.says)
		} else {
			t.Logf("%s refused: %s: %s", c.name, ready.Reason, m.Status.Message)
		}
	}
	s.checkClients(t, lc, "refused migrations")
	s.stopClients(t, lc)
}

// testAdminOnlyFromAgent runs handoffctl in the agent's container, where
// it may administer, and as root in an application pod that mounts the
// socket, where the agent must refuse it: that pod could otherwise move
// other pods' connections to itself.
func (s *suite) testAdminOnlyFromAgent(t *testing.T) {
	out := s.run(t, time.Minute, s.kubectl, "exec", "-n", systemNS, "ds/"+release+"-nodeagent", "-c", "nodeagent", "--",
		"/handoffctl", "--socket", "/run/handoff/agent.sock", "sessions")
	t.Logf("handoffctl in the agent's container:\n%s", out)

	ns := s.namespace(t, "intruder")
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "intruder"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
			},
			Containers: []corev1.Container{{
				Name: "handoffctl", Image: s.imageRepo + ":" + s.imageTag, ImagePullPolicy: corev1.PullIfNotPresent,
				Command:      []string{"/handoffctl", "--socket", "/run/handoff/agent.sock", "sessions"},
				VolumeMounts: []corev1.VolumeMount{{Name: "handoff", MountPath: "/run/handoff"}},
			}},
			Volumes: []corev1.Volume{{Name: "handoff", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/run/handoff", Type: ptr.To(corev1.HostPathDirectory)},
			}}},
		},
	}
	s.createPod(t, p)
	var phase corev1.PodPhase
	waitFor(t, "the intruder's handoffctl to exit", 2*time.Minute, func() (bool, string, error) {
		var got corev1.Pod
		if err := s.c.Get(context.Background(), client.ObjectKeyFromObject(p), &got); err != nil {
			return false, "", err
		}
		phase = got.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, string(phase), nil
	})
	logs, _ := command(time.Minute, "", s.kubectl, "logs", "-n", ns, "intruder")
	if phase != corev1.PodFailed || !strings.Contains(logs, "administrators run on the node or in the agent's own container") {
		t.Fatalf("handoffctl as root in an application pod: pod %s, output:\n%s\nwant it refused by the agent", phase, logs)
	}
	t.Logf("handoffctl in an application pod, refused as it should be: %s", strings.TrimSpace(logs))
}

// podOpts shape a streamer pod.
type podOpts struct {
	hostNetwork   bool
	port          int
	standby       bool
	restartAlways bool
	warmup        time.Duration
}

// streamerPod is the example streamer, opted in to handoff as
// config/samples/streamer.yaml shows.
func streamerPod(ns, name, image string, o podOpts) *corev1.Pod {
	args := []string{fmt.Sprintf("--addr=:%d", o.port), "--rate=8192", "--tick=50ms", "--ready-file=" + readyFile}
	if o.standby {
		args = append(args, "--standby", "--standby-timeout=30m")
	}
	if o.warmup > 0 {
		args = append(args, "--warmup="+o.warmup.String())
	}
	restart := corev1.RestartPolicyOnFailure
	if o.restartAlways {
		restart = corev1.RestartPolicyAlways
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app.kubernetes.io/name": "streamer"}},
		Spec: corev1.PodSpec{
			HostNetwork:   o.hostNetwork,
			RestartPolicy: restart,
			// Killed processes must go at once, not in 30 s.
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532), RunAsGroup: ptr.To[int64](65532),
				SupplementalGroups: []int64{socketGroup}, // the agent's socket is root:socketGroup 0660
				SeccompProfile:     &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: streamerName, Image: image, ImagePullPolicy: corev1.PullIfNotPresent, Args: args,
				Env: []corev1.EnvVar{{Name: "HANDOFF_SOCKET", Value: "/run/handoff/agent.sock"}},
				// As config/samples/streamer.yaml: Ready while this
				// process serves. Not a TCP probe: that is a connection
				// like any other, one open at the freeze would be moved
				// and counted, and these tests count exactly.
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/streamer", "--ready-file=" + readyFile, "--check"}}},
					PeriodSeconds: 1,
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "handoff", MountPath: "/run/handoff"}, {Name: "run", MountPath: filepath.Dir(readyFile)}},
			}},
			Volumes: []corev1.Volume{
				{Name: "handoff", VolumeSource: corev1.VolumeSource{
					HostPath: &corev1.HostPathVolumeSource{Path: "/run/handoff", Type: ptr.To(corev1.HostPathDirectory)},
				}},
				{Name: "run", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			},
		},
	}
}

// readyFile is where the streamer says it serves, for its readiness probe.
const readyFile = "/var/run/streamer/ready"

// namespace creates a namespace for one test, dumps it if the test fails
// and deletes it afterwards.
func (s *suite) namespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := fmt.Sprintf("e2e-%s-%04x", prefix, rand.IntN(1<<16))
	if err := s.c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.dump(t, t.Name(), ns)
		}
		_ = s.c.Delete(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	})
	return ns
}

func (s *suite) createPod(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if err := s.c.Create(context.Background(), p); err != nil {
		t.Fatalf("create pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

func (s *suite) waitPodReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	return s.waitPod(t, ns, name, "ready", func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended %s", name, p.Status.Phase)
		}
		c := podCondition(p, corev1.PodReady)
		return c != nil && c.Status == corev1.ConditionTrue, nil
	})
}

// waitPodRunning waits until the pod's streamer container runs; a
// standby streamer is not Ready before it takes over.
func (s *suite) waitPodRunning(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	return s.waitPod(t, ns, name, "running", func(p *corev1.Pod) (bool, error) {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == streamerName && cs.State.Running != nil {
				if c := podCondition(p, corev1.PodReady); c != nil && c.Status == corev1.ConditionTrue {
					return false, fmt.Errorf("standby pod %s is Ready before it serves", name)
				}
				return true, nil
			}
		}
		return false, nil
	})
}

// waitPod polls pod ns/name until done says so (or fails), for up to two
// minutes, reporting its phase while it waits.
func (s *suite) waitPod(t *testing.T, ns, name, what string, done func(*corev1.Pod) (bool, error)) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	waitFor(t, "pod "+name+" "+what, 2*time.Minute, func() (bool, string, error) {
		if err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
			return false, "", err
		}
		ok, err := done(&p)
		return ok, string(p.Status.Phase), err
	})
	return &p
}

// waitServing waits until addr accepts connections.
func waitServing(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, addr+" serving", time.Minute, func() (bool, string, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error(), nil
		}
		c.Close()
		return true, "", nil
	})
}

func (s *suite) waitPodGone(t *testing.T, ns, name string) {
	t.Helper()
	waitFor(t, "pod "+name+" deleted", 2*time.Minute, func() (bool, string, error) {
		var p corev1.Pod
		err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p)
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, string(p.Status.Phase), err
	})
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == typ {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

func containerStatus(t *testing.T, p *corev1.Pod) corev1.ContainerStatus {
	t.Helper()
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == streamerName {
			return cs
		}
	}
	t.Fatalf("pod %s has no status for container %s", p.Name, streamerName)
	return corev1.ContainerStatus{}
}

// apply creates a Migration with kubectl apply, as a user would.
func (s *suite) apply(t *testing.T, ns, name, spec string) {
	t.Helper()
	doc := fmt.Sprintf("apiVersion: handoff.dev/v1alpha1\nkind: Migration\nmetadata:\n  name: %s\n  namespace: %s\n%s\n", name, ns, strings.TrimLeft(spec, "\n"))
	s.runInput(t, time.Minute, doc, s.kubectl, "apply", "-f", "-")
}

// migrate applies a Migration and waits for its final phase.
func (s *suite) migrate(t *testing.T, ns, name, spec string) *handoffv1.Migration {
	t.Helper()
	start := time.Now()
	s.apply(t, ns, name, spec)
	return s.waitMigration(t, ns, name, start, "kubectl apply")
}

func (s *suite) getMigration(ns, name string) (*handoffv1.Migration, error) {
	var m handoffv1.Migration
	err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &m)
	return &m, err
}

// waitMigration waits for a final phase, logging each phase on the way.
func (s *suite) waitMigration(t *testing.T, ns, name string, start time.Time, from string) *handoffv1.Migration {
	t.Helper()
	var m *handoffv1.Migration
	last := handoffv1.Phase("-")
	waitFor(t, "migration "+name+" to finish", 3*time.Minute, func() (bool, string, error) {
		var err error
		if m, err = s.getMigration(ns, name); err != nil {
			return false, "", err
		}
		if m.Status.Phase != last {
			t.Logf("migration %s: %s after %v %s", name, phaseOrNone(m.Status.Phase), time.Since(start).Round(time.Millisecond), m.Status.Message)
			last = m.Status.Phase
		}
		return m.Status.Phase == handoffv1.PhaseCompleted || m.Status.Phase == handoffv1.PhaseFailed, string(m.Status.Phase), nil
	})
	pause := "-"
	if m.Status.Pause != nil {
		pause = m.Status.Pause.Duration.String()
	}
	s.timing("%s/%s: %s → %s in %v (pause %s)", ns, name, from, m.Status.Phase, time.Since(start).Round(time.Millisecond), pause)
	return m
}

func phaseOrNone(p handoffv1.Phase) string {
	if p == "" {
		return "(no phase yet)"
	}
	return string(p)
}

func wantCompleted(t *testing.T, m *handoffv1.Migration, conns int) {
	t.Helper()
	if m.Status.Phase != handoffv1.PhaseCompleted {
		t.Fatalf("migration %s: %s: %s; want Completed", m.Name, m.Status.Phase, m.Status.Message)
	}
	mv := m.Status.Moved
	if mv == nil || int(mv.Connections) != conns || mv.Listeners != 1 {
		t.Fatalf("migration %s moved %+v; want exactly 1 listener and the %d clients' connections", m.Name, mv, conns)
	}
	if m.Status.Pause == nil || m.Status.Pause.Duration <= 0 {
		t.Fatalf("migration %s completed without a pause in its status", m.Name)
	}
	t.Logf("migration %s completed: %d connections, %d listeners, pause %v", m.Name, mv.Connections, mv.Listeners, m.Status.Pause.Duration)
}

// startClients opens n verifying streams to addr and waits for bytes on
// every one.
func (s *suite) startClients(t *testing.T, addr string, n int) *loadclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lc, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: n, NamePrefix: fmt.Sprintf("e2e-%04x-", rand.IntN(1<<16)), Logf: t.Logf})
	if err != nil {
		t.Fatalf("clients to %s: %v", addr, err)
	}
	t.Cleanup(func() { lc.Stop() })
	if err := lc.WaitAdvanced(ctx, lc.Mark(), 1024); err != nil {
		t.Fatalf("clients to %s: %v", addr, err)
	}
	return lc
}

// checkClients waits until every stream received more verified bytes and
// fails on any reset, close, mismatch or error.
func (s *suite) checkClients(t *testing.T, lc *loadclient.Client, after string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := lc.WaitAdvanced(ctx, lc.Mark(), 4096)
	st := lc.Snapshot()
	if err != nil || len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("clients after %s: %v; %s\n%s", after, err, st, strings.Join(st.Failures(), "\n"))
	}
	t.Logf("clients after %s: %s", after, st)
}

func (s *suite) stopClients(t *testing.T, lc *loadclient.Client) {
	t.Helper()
	if st := lc.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("clients: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	}
}

// killContainer kills the pod's streamer process with SIGKILL when this
// test runs as root on the node's host (its /proc shows the container's
// processes), else it force-deletes the pod, which makes kubelet kill it.
func (s *suite) killContainer(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	id := containerStatus(t, p).ContainerID
	if _, bare, ok := strings.Cut(id, "://"); ok {
		id = bare
	}
	if os.Geteuid() == 0 && id != "" {
		if pids := pidsOfContainer(id); len(pids) > 0 {
			for _, pid := range pids {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill pid %d of container %s: %v", pid, id, err)
				}
			}
			return fmt.Sprintf("SIGKILL to pid %v of container %.12s", pids, id)
		}
	}
	if err := s.c.Delete(context.Background(), p, client.GracePeriodSeconds(0)); err != nil {
		t.Fatalf("force-delete pod %s: %v", p.Name, err)
	}
	return "force-deleted pod " + p.Name + " (not root on the node's host: its processes are out of reach)"
}

// pidsOfContainer finds the processes whose cgroup names container id.
func pidsOfContainer(id string) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !bytes.Contains(b, []byte(id)) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// freePort picks a port free on this host for a hostNetwork pod.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond every 250 ms until it holds, an error or timeout.
// It logs the state every 15 s so that a long wait shows its progress.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string, error)) {
	t.Helper()
	start := time.Now()
	deadline, nextLog := start.Add(timeout), start.Add(15*time.Second)
	state := ""
	for {
		ok, st, err := cond()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return
		}
		state = st
		now := time.Now()
		if now.After(deadline) {
			t.Fatalf("waited %v for %s; last state: %s", timeout, what, state)
		}
		if now.After(nextLog) {
			t.Logf("still waiting for %s after %v: %s", what, now.Sub(start).Round(time.Second), state)
			nextLog = now.Add(15 * time.Second)
		}
		time.Sleep(250 * time.Millisecond) // polling interval, not synchronisation
	}
}

// run runs a command and fails the test with its output if it fails.
func (s *suite) run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	return s.runInput(t, timeout, "", name, args...)
}

func (s *suite) runInput(t *testing.T, timeout time.Duration, input, name string, args ...string) string {
	t.Helper()
	out, err := command(timeout, input, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

func command(timeout time.Duration, input, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if input != "" {
		cmd.Stdin = strings.NewReader(input)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// dump writes what a person needs to see why a test failed: Migrations
// as YAML and Events into the test log, everything with the manager's,
// agents' and pods' logs into the artifacts directory.
func (s *suite) dump(t *testing.T, name, ns string) {
	dir := filepath.Join(s.artifacts, strings.NewReplacer("/", "_", " ", "_").Replace(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("dump: %v", err)
		return
	}
	k := func(file string, args ...string) string {
		out, err := command(time.Minute, "", s.kubectl, args...)
		if err != nil {
			out += "\n(" + err.Error() + ")"
		}
		_ = os.WriteFile(filepath.Join(dir, file), []byte(out), 0o644)
		return out
	}
	scope := []string{"-A"}
	if ns != "" {
		scope = []string{"-n", ns}
	}
	migs := k("migrations.yaml", append([]string{"get", "migrations", "-o", "yaml"}, scope...)...)
	events := k("events.txt", append([]string{"get", "events", "--sort-by=.lastTimestamp"}, scope...)...)
	k("pods.txt", append([]string{"describe", "pods"}, scope...)...)
	k("system-pods.txt", "get", "pods", "-n", systemNS, "-o", "wide")
	manager := k("manager.log", "logs", "-n", systemNS, "-l", "app.kubernetes.io/component=manager", "--tail=-1", "--prefix")
	agent := k("nodeagent.log", "logs", "-n", systemNS, "-l", "app.kubernetes.io/component=nodeagent", "--tail=-1", "--prefix")
	if ns != "" {
		var pods corev1.PodList
		if err := s.c.List(context.Background(), &pods, client.InNamespace(ns)); err == nil {
			for _, p := range pods.Items {
				k(p.Name+".log", "logs", "-n", ns, p.Name, "--all-containers")
				k(p.Name+".previous.log", "logs", "-n", ns, p.Name, "--all-containers", "--previous")
			}
		}
	}
	t.Logf("--- dump of %s (all of it in %s)\n## Migrations\n%s\n## Events\n%s\n## manager log (tail)\n%s\n## agent log (tail)\n%s",
		name, dir, migs, events, tail(manager, 40), tail(agent, 60))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
