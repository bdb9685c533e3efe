// Package integration holds the user stories of the Migration API against
// a real kube-apiserver and etcd (envtest, with binaries built from the Go
// module proxy by hack/envtest-bins.sh): the controller and two node agents
// run in this process, and the "containers" are real streamer processes
// placed in real kubelet-shaped cgroups, serving real verifying clients.
//
// Only the stories that run such processes need root (to create the
// cgroups) and say so when they skip; the controller-only stories
// (validation, deadlines, nodes and agents gone) need just the API server.
package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrlzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/controllers"
	"github.com/handoff-dev/handoff/examples/streamer/server"
	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/kube"
	"github.com/handoff-dev/handoff/nodeagent/podid"
)

// bound is how long any wait may take before it counts as a hang.
const bound = 60 * time.Second

const roleEnv = "HANDOFF_ITEST_ROLE"

var (
	cfg    *rest.Config
	scheme = runtime.NewScheme()
	k8s    client.Client
	// skipWhy is set when the API server binaries are not there.
	skipWhy string
)

func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "streamer" {
		runStreamer()
		return
	}
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		skipWhy = "needs KUBEBUILDER_ASSETS naming kube-apiserver and etcd: run `make test` (it builds them with hack/envtest-bins.sh)"
		os.Exit(m.Run())
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	var err error
	cfg, err = env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start kube-apiserver and etcd from %s: %v\n", assets, err)
		os.Exit(1)
	}
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintf(os.Stderr, "client: %v\n", err)
		env.Stop()
		os.Exit(1)
	}
	ctrl.SetLogger(logr.Discard())
	code := m.Run()
	stopCluster() // the managers' watches would keep the API server from stopping
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
	}
	os.Exit(code)
}

// runStreamer is the child process: the example streamer, configured by
// the environment, printing "serving" once it serves.
func runStreamer() {
	c := server.Config{Addr: os.Getenv("ITEST_ADDR"), Socket: os.Getenv("ITEST_SOCKET"), Standby: os.Getenv("ITEST_STANDBY") == "1",
		Rate: 4096, Tick: 50 * time.Millisecond, StandbyTimeout: bound}
	c.OnReady = func(i server.Info) { fmt.Printf("serving on %s imported=%d\n", i.Addr, i.Imported) }
	c.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	c.OnExit = func(s server.Summary) {
		if s.MovedAway {
			fmt.Printf("moved away: moved=%d\n", s.Moved)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := server.Run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func needAPIServer(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// cluster is the controller plus one agent per node, all in this process.
type cluster struct {
	agents map[string]*nodeAgent
	ctl    *controllers.MigrationReconciler
}

type nodeAgent struct {
	node   string
	socket string
	agent  *nodeagent.Agent
	mgr    ctrl.Manager
	rec    *kube.Reconciler
	fault  atomic.Pointer[faultHook]
}

// faultHook runs fn once, on the transaction's goroutine, when the agent
// reaches step.
type faultHook struct {
	step string
	once sync.Once
	fn   func()
}

// setFault arms a fault at step of na's next transactions, for this test.
func setFault(t *testing.T, na *nodeAgent, step string, fn func()) {
	na.fault.Store(&faultHook{step: step, fn: fn})
	t.Cleanup(func() { na.fault.Store(nil) })
}

var (
	clusterOnce sync.Once
	theCluster  *cluster
	clusterErr  error
)

// startCluster starts, once for the whole run, the controller and agents
// for node-a and node-b; node-c exists but has no agent. It needs no root:
// the agents listen in a temporary directory, and only the processes a
// story starts in them need cgroups (createPodInCgroup).
func startCluster(t *testing.T) *cluster {
	t.Helper()
	needAPIServer(t)
	clusterOnce.Do(func() { theCluster, clusterErr = newCluster(t) })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return theCluster
}

// stopCluster stops the managers and agents, once every test ran.
var stopCluster = func() {}

func newCluster(t *testing.T) (*cluster, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background()) // lives for the whole test binary
	var wg sync.WaitGroup
	stopCluster = func() { cancel(); wg.Wait() }
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		if err := k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}); err != nil {
			return nil, fmt.Errorf("create node %s: %w", n, err)
		}
	}
	quiet := itestLog()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Logger: quiet.WithName("controller"),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	c := &cluster{agents: map[string]*nodeAgent{}, ctl: &controllers.MigrationReconciler{AgentGrace: 2 * time.Second,
		AgentSelector: labels.SelectorFromSet(agentPodLabels)}}
	// The node agents' pods as the controller sees them: node-a and node-b
	// run real agents in this process, node-c only a pod (an agent that
	// never reports); a node without one has no agent at all.
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentNamespace}}); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", agentNamespace, err)
	}
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		if err := createAgentPod(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := c.ctl.SetupWithManager(ctx, mgr); err != nil {
		return nil, err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "controller manager stopped: %v\n", err)
		}
	}()
	dir, err := os.MkdirTemp("", "handoff-itest-")
	if err != nil {
		return nil, err
	}
	for _, n := range []string{"node-a", "node-b"} {
		na, err := startNodeAgent(ctx, &wg, n, filepath.Join(dir, n, "agent.sock"), "nodeagent-"+n, quiet.WithName(n))
		if err != nil {
			return nil, err
		}
		c.agents[n] = na
	}
	return c, nil
}

// startNodeAgent starts a node agent for node on socket (taking over from
// an agent serving it already, as an upgrade does) and, once it serves,
// its Kubernetes reconciler, named controller, in a manager of its own.
// Both stop when ctx ends; wg counts them.
func startNodeAgent(ctx context.Context, wg *sync.WaitGroup, node, socket, controller string, log logr.Logger) (*nodeAgent, error) {
	na := &nodeAgent{node: node, socket: socket}
	na.agent = nodeagent.New(nodeagent.Config{Socket: socket, Log: log, Identify: resolver.Resolve,
		Fault: func(step string) {
			if h := na.fault.Load(); h != nil && h.step == step {
				h.once.Do(h.fn)
			}
		}})
	if err := na.agent.Listen(); err != nil {
		return nil, fmt.Errorf("agent of %s: %w", node, err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); na.agent.Serve(ctx) }()
	var err error
	na.mgr, err = ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Logger: log, Cache: kube.CacheOptions(node),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		return nil, fmt.Errorf("agent manager of %s: %w", node, err)
	}
	na.rec = &kube.Reconciler{Agent: na.agent, Node: node, ControllerName: controller}
	if err := na.rec.SetupWithManager(na.mgr); err != nil {
		return nil, err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := na.mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "agent manager of %s stopped: %v\n", node, err)
		}
	}()
	return na, nil
}

// itestLog is where the managers and agents log: nowhere, unless
// HANDOFF_ITEST_LOG=1.
func itestLog() logr.Logger {
	if os.Getenv("HANDOFF_ITEST_LOG") != "" {
		return ctrlzap.New(ctrlzap.WriteTo(os.Stderr), ctrlzap.UseDevMode(true))
	}
	return logr.Discard()
}

// resolver identifies the streamers' pods from their cgroups.
var resolver = podid.NewResolver("")

// agentPodLabels mark the stand-ins for the agent DaemonSet's pods.
var agentPodLabels = labels.Set{"app.kubernetes.io/name": "handoff", "app.kubernetes.io/component": "nodeagent"}

const agentNamespace = "handoff-system"

// createAgentPod creates a Running agent pod object on node.
func createAgentPod(ctx context.Context, node string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: "nodeagent-" + node, Labels: agentPodLabels},
		Spec:       corev1.PodSpec{NodeName: node, HostPID: true, Containers: []corev1.Container{{Name: "nodeagent", Image: "handoff:v0.1.0"}}},
	}
	if err := k8s.Create(ctx, pod); err != nil {
		return fmt.Errorf("create agent pod on %s: %w", node, err)
	}
	pod.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(ctx, pod); err != nil {
		return fmt.Errorf("set agent pod on %s running: %w", node, err)
	}
	return nil
}

// proc is a streamer child process standing in for a container.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

// createPod creates a Running pod on node with one container named "app"
// whose container ID names no cgroup: enough for the controller, which
// reads only the pod objects, and for an agent that is never asked to find
// the container's process.
func createPod(t *testing.T, ns, name, node string, hostNetwork bool) *corev1.Pod {
	t.Helper()
	pod := newPod(t, ns, name, node, hostNetwork)
	setRunning(t, pod, randomContainerID(t))
	return pod
}

// createPodInCgroup is createPod with a real cgroup for the container, as
// kubelet would create it, so that a process started in it (startStreamer)
// is the pod's to the node agent; it needs root, and skips saying so
// without. It returns the pod and the cgroup dir.
func createPodInCgroup(t *testing.T, ns, name, node string, hostNetwork bool) (*corev1.Pod, string) {
	t.Helper()
	mnt := needCgroups(t)
	pod := newPod(t, ns, name, node, hostNetwork)
	dir, id := containerCgroup(t, mnt, string(pod.UID))
	setRunning(t, pod, id)
	return pod, dir
}

// newPod creates the pod object, without a status.
func newPod(t *testing.T, ns, name, node string, hostNetwork bool) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: hostNetwork,
			Containers: []corev1.Container{{Name: "app", Image: "handoff/streamer:v1"}}},
	}
	if err := k8s.Create(context.Background(), pod); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return pod
}

// setRunning gives pod the status kubelet reports for a running, ready
// container "app" with containerd container id (64 hex).
func setRunning(t *testing.T, pod *corev1.Pod, id string) {
	t.Helper()
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "app", Ready: true, Image: "handoff/streamer:v1", ImageID: "sha256:" + strings.Repeat("0", 64),
		ContainerID: "containerd://" + id,
		State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
	}}}
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatalf("set status of pod %s: %v", pod.Name, err)
	}
}

// startStreamer starts a streamer child inside cgroup dir, joined to the
// agent socket, and waits until it serves (an active one) or has joined
// (standby: it prints nothing until it has imported).
func startStreamer(t *testing.T, cgroupDir, socket, addr string, standby bool) *proc {
	t.Helper()
	cg, err := os.Open(cgroupDir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	sb := "0"
	if standby {
		sb = "1"
	}
	cmd.Env = append(os.Environ(), roleEnv+"=streamer", "ITEST_ADDR="+addr, "ITEST_SOCKET="+socket, "ITEST_STANDBY="+sb)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr io.Writer = io.Discard
	if os.Getenv("HANDOFF_ITEST_LOG") != "" {
		stderr = os.Stderr
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start streamer in %s: %v", cgroupDir, err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 16), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range p.lines {
		}
		<-p.done
	})
	if !standby {
		p.waitLine(t, "serving on")
	}
	return p
}

func (p *proc) waitLine(t *testing.T, substr string) string {
	t.Helper()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("streamer pid %d exited before printing %q", p.cmd.Process.Pid, substr)
			}
			if strings.Contains(l, substr) {
				return l
			}
		case <-timer.C:
			t.Fatalf("streamer pid %d did not print %q within %v", p.cmd.Process.Pid, substr, bound)
		}
	}
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
