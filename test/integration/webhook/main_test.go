// Package webhook tests the pod-injection and Deployment webhooks against
// a real kube-apiserver and etcd (envtest, binaries from
// hack/envtest-bins.sh):
// the API server calls the webhook over TLS, trusting only the CA the
// manager's own certificate code issued into its Secret and patched into
// the configuration's caBundle. The configuration calls
// https://127.0.0.1:<port>, which the certificate covers as an extra host.
package webhook

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrlzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/handoff-dev/handoff/controllers/deployhook"
	"github.com/handoff-dev/handoff/controllers/inject"
	"github.com/handoff-dev/handoff/controllers/webhookcert"
)

// bound is how long any wait may take before it counts as a hang.
const bound = 30 * time.Second

const (
	systemNS      = "handoff-system"
	configName    = "handoff-webhook"
	socketGroup   = 2750
	socketDir     = "/run/handoff"
	webhookSecret = "handoff-webhook-cert"
)

var (
	cfg    *rest.Config
	scheme = runtime.NewScheme()
	k8s    client.Client
	// port is where every manager of this test serves the webhook, and
	// what the configuration calls.
	port    int
	skipWhy string
	// warnings collects the admission warnings k8s's requests received.
	warnings warningLog
)

func TestMain(m *testing.M) {
	_ = clientgoscheme.AddToScheme(scheme)
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		skipWhy = "needs KUBEBUILDER_ASSETS naming kube-apiserver and etcd: run `make test` (it builds them with hack/envtest-bins.sh)"
		os.Exit(m.Run())
	}
	ctrl.SetLogger(logr.Discard())
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	var err error
	if cfg, err = env.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "start kube-apiserver and etcd from %s: %v\n", assets, err)
		os.Exit(1)
	}
	code := 1
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
	}
	os.Exit(code)
}

// setup creates the client, the manager's namespace and the webhook
// configuration as config/webhook has it, but calling 127.0.0.1.
func setup() error {
	wcfg := rest.CopyConfig(cfg)
	wcfg.WarningHandler = &warnings
	var err error
	if k8s, err = client.New(wcfg, client.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if port, err = freePort(); err != nil {
		return err
	}
	ctx := context.Background()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}}); err != nil {
		return fmt.Errorf("create namespace %s: %w", systemNS, err)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d%s", port, inject.Path)
	entry := func(name string) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{
			Name:         name,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             ptr(admissionregistrationv1.SideEffectClassNoneOnDryRun),
			FailurePolicy:           ptr(admissionregistrationv1.Ignore),
			ReinvocationPolicy:      ptr(admissionregistrationv1.IfNeededReinvocationPolicy),
			TimeoutSeconds:          ptr[int32](5),
		}
	}
	enabled := map[string]string{"handoff.dev/enabled": "true"}
	byPod, byNS := entry("pod.inject.handoff.dev"), entry("namespace.inject.handoff.dev")
	byPod.ObjectSelector = &metav1.LabelSelector{MatchLabels: enabled}
	byNS.NamespaceSelector = &metav1.LabelSelector{MatchLabels: enabled}
	byNS.ObjectSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
		Key: "handoff.dev/enabled", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false"}}}}
	deployURL := fmt.Sprintf("https://127.0.0.1:%d%s", port, deployhook.Path)
	byDeploy := entry("deployment.inplace.handoff.dev")
	byDeploy.ClientConfig.URL = &deployURL
	byDeploy.Rules = []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
		Rule:       admissionregistrationv1.Rule{APIGroups: []string{"apps"}, APIVersions: []string{"v1"}, Resources: []string{"deployments"}},
	}}
	byDeploy.ReinvocationPolicy = ptr(admissionregistrationv1.NeverReinvocationPolicy)
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: configName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{byPod, byNS, byDeploy}}
	if err := k8s.Create(ctx, wh); err != nil {
		return fmt.Errorf("create mutatingwebhookconfiguration: %w", err)
	}
	return nil
}

func needAPIServer(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// manager is one manager process's webhook part, as cmd/manager sets it
// up, running in this process.
type manager struct {
	rot    *webhookcert.Rotator
	probe  string // address of /readyz
	cancel context.CancelFunc
	done   chan error
}

// startManager starts a manager serving the webhook on port, its
// certificate in Secret secretNS/handoff-webhook-cert, and stops it when
// the test ends (or earlier, with stop).
func startManager(t *testing.T, secretNS string) *manager {
	t.Helper()
	probePort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	log := logr.Discard() // HANDOFF_ITEST_LOG=1 shows the manager's log
	if os.Getenv("HANDOFF_ITEST_LOG") != "" {
		log = ctrlzap.New(ctrlzap.WriteTo(os.Stderr), ctrlzap.UseDevMode(true))
	}
	rot := &webhookcert.Rotator{
		Secret:  types.NamespacedName{Namespace: secretNS, Name: webhookSecret},
		Hosts:   append(webhookcert.ServiceHosts("handoff-webhook", secretNS), "127.0.0.1"),
		Webhook: configName,
		// Longer than any test: a caBundle restored sooner came from the
		// watch.
		Interval: time.Hour,
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme, Logger: log,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: net.JoinHostPort("127.0.0.1", strconv.Itoa(probePort)),
		WebhookServer:          crwebhook.NewServer(crwebhook.Options{Host: "127.0.0.1", Port: port, TLSOpts: []func(*tls.Config){rot.TLSConfig}}),
	})
	if err != nil {
		t.Fatalf("manager: %v", err)
	}
	// What cmd/manager's webhookOptions.setup does.
	if err := rot.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	(&inject.Webhook{Config: inject.Config{SocketDir: socketDir, SocketGroup: socketGroup}, Recorder: mgr.GetEventRecorder(inject.Name)}).Register(mgr.GetWebhookServer())
	(&deployhook.Webhook{Recorder: mgr.GetEventRecorder(deployhook.Name)}).Register(mgr.GetWebhookServer())
	if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &manager{rot: rot, probe: fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort), cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- mgr.Start(ctx) }()
	t.Cleanup(m.stop)
	return m
}

// stop stops the manager and waits until it has, so that its port is free
// and nobody answers on it. Idempotent.
func (m *manager) stop() {
	m.cancel()
	if err, ok := <-m.done; ok {
		close(m.done)
		if err != nil {
			fmt.Fprintf(os.Stderr, "manager stopped: %v\n", err)
		}
	}
}

// readyz returns the manager's readiness: nil once every check passes.
func (m *manager) readyz() error {
	resp, err := http.Get(m.probe + "?verbose")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	return nil
}

// waitServing waits until the manager is ready, the configuration
// carries its Secret's CA, and the API server calls the webhook with it:
// a labelled pod created in a dry run comes back injected.
func (m *manager) waitServing(t *testing.T) {
	t.Helper()
	eventually(t, "manager ready", func() error { return m.readyz() })
	eventually(t, "caBundle is the Secret's CA", func() error {
		ca, bundles := secretCA(t, m.rot.Secret.Namespace), caBundles(t)
		for i, b := range bundles {
			if string(b) != string(ca) {
				return fmt.Errorf("entry %d has another caBundle", i)
			}
		}
		return nil
	})
	ns := namespace(t, nil)
	eventually(t, "the API server calls the webhook", func() error {
		p := newPod(ns, "probe", map[string]string{"handoff.dev/enabled": "true"}, "app")
		if err := k8s.Create(context.Background(), p, client.DryRunAll); err != nil {
			return err
		}
		if len(p.Spec.Volumes) == 0 {
			return fmt.Errorf("dry-run pod not injected")
		}
		return nil
	})
}

// eventually polls cond until it returns nil, failing the test after
// bound with its last error.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, bound, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

func secretCA(t *testing.T, ns string) []byte {
	t.Helper()
	var s corev1.Secret
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: webhookSecret}, &s); err != nil {
		t.Fatalf("get webhook secret: %v", err)
	}
	return s.Data[webhookcert.KeyCACert]
}

func caBundles(t *testing.T) [][]byte {
	t.Helper()
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	if err := k8s.Get(context.Background(), client.ObjectKey{Name: configName}, &wh); err != nil {
		t.Fatalf("get webhook configuration: %v", err)
	}
	var out [][]byte
	for _, w := range wh.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

// namespace creates a namespace with labels for one test.
func namespace(t *testing.T, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "webhook-", Labels: labels}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

func newPod(ns, name string, labels map[string]string, containers ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "example.com/app:1"})
	}
	return p
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// warningLog is a rest.WarningHandler that keeps what it is told.
type warningLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningLog) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

// since returns the warnings received after the first n.
func (w *warningLog) since(n int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msgs[n:]...)
}

func (w *warningLog) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.msgs)
}

func ptr[T any](v T) *T { return &v }
