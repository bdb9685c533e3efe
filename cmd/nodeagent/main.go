// Command nodeagent is the handoff node agent. In standalone mode it serves
// the agent socket on a plain host, with handoffctl as the operator's tool.
// With a node name (--node-name or NODE_NAME, as the DaemonSet sets it from
// the downward API) it also runs the Kubernetes reconciler: it performs the
// Migrations scheduled to its node, identifying every process's pod and
// container from the kernel.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/kube"
	"github.com/handoff-dev/handoff/nodeagent/podid"
)

func main() {
	var (
		socket      = flag.String("socket", envOr("HANDOFF_SOCKET", nodeagent.DefaultSocket), "path of the agent's unix socket")
		socketMode  = flag.Uint("socket-mode", nodeagent.DefaultSocketMode, "permissions of the socket file")
		dirMode     = flag.Uint("dir-mode", nodeagent.DefaultDirMode, "permissions of the socket's directory when created")
		metricsAddr = flag.String("metrics-bind-address", "127.0.0.1:9750", "address of /metrics and /healthz; \"0\" disables")
		timeout     = flag.Duration("migrate-timeout", nodeagent.DefaultMigrateTimeout, "default deadline of a migration")
		hold        = flag.Duration("store-hold", nodeagent.DefaultStoreHold, "how long stored descriptors wait for a claimant")
		node        = flag.String("node-name", os.Getenv("NODE_NAME"), "this node's name: runs the Kubernetes reconciler for its Migrations (empty: standalone)")
		procRoot    = flag.String("proc-root", "/proc", "where the host's /proc is mounted (the agent needs hostPID to see the applications' processes)")
	)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&opts)).WithName("nodeagent")
	ctrl.SetLogger(log)

	if soft, hard, err := fdlimit.Raise(); err != nil {
		log.Error(err, "could not raise the open-file limit")
	} else {
		log.V(1).Info("open-file limit", "soft", soft, "hard", hard)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	cfg := nodeagent.Config{
		Socket: *socket, SocketMode: os.FileMode(*socketMode), DirMode: os.FileMode(*dirMode),
		MigrateTimeout: *timeout, StoreHold: *hold, Log: log,
		// Under systemd (deploy/systemd): READY=1, and the listener and
		// the store kept in systemd's fd store across restarts.
		Systemd: nodeagent.SystemdFromEnv(),
	}
	// Under Kubernetes the agent tells a joining process whether to wait
	// for a predecessor, from its pod; the client arrives with the
	// manager below.
	preds := &kube.Predecessors{}
	succs := &kube.Successors{Node: *node}
	if *node != "" {
		cfg.Identify = podid.NewResolver(*procRoot).Resolve
		cfg.Predecessor = preds.Wait
		cfg.Successor = succs.Is
	}
	a := nodeagent.New(cfg)
	// Health first: Listen waits for an agent serving the socket to hand
	// over (an upgrade), which may take as long as its transactions, and
	// meanwhile this one is alive (/healthz) but not ready (/readyz).
	metricsUp := make(chan net.Addr, 1) // the bound address, or nil
	if *metricsAddr != "0" && *metricsAddr != "" {
		go func() {
			err := a.ServeHTTP(ctx, *metricsAddr, func(addr net.Addr) {
				log.Info("serving metrics and health", "address", addr.String())
				metricsUp <- addr
			})
			if err != nil {
				log.Error(err, "metrics server stopped")
			}
			select {
			case metricsUp <- nil: // it never bound
			default:
			}
		}()
	} else {
		metricsUp <- nil
	}
	if err := a.Listen(); err != nil {
		log.Error(err, "cannot serve the agent socket")
		os.Exit(1)
	}
	// Scripts wait for these lines instead of polling.
	fmt.Printf("nodeagent: ready socket=%s\n", *socket)
	if addr := <-metricsUp; addr != nil {
		fmt.Printf("nodeagent: metrics address=%s\n", addr)
	}
	if *node != "" {
		if err := runKubernetes(ctx, a, *node, preds, succs); err != nil {
			log.Error(err, "cannot run the Kubernetes reconciler", "node", *node)
			os.Exit(1)
		}
	}
	if err := a.Serve(ctx); err != nil {
		log.Error(err, "agent stopped")
		os.Exit(1)
	}
	if a.HandedOver() && *node != "" {
		// Under Kubernetes the successor is the DaemonSet's new pod, and
		// this pod is deleted once it is ready. Exiting now would only
		// make kubelet restart this container, which would take
		// everything back. The reconciler finishes the reports it owes
		// (in-place restarts it waited for) and starts nothing new.
		log.Info("handed over to the successor; waiting for this pod to be stopped")
		<-ctx.Done()
	}
	log.Info("agent stopped")
}

// runKubernetes starts, in the background, a manager whose cache holds only
// this node's Migrations and Pods, and the reconciler that performs them.
func runKubernetes(ctx context.Context, a *nodeagent.Agent, node string, preds *kube.Predecessors, succs *kube.Successors) error {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fmt.Errorf("register core types: %w", err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return fmt.Errorf("register handoff types: %w", err)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  kube.CacheOptions(node),
		Metrics:                metricsserver.Options{BindAddress: "0"}, // the agent serves its own /metrics
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := (&kube.Reconciler{Agent: a, Node: node}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the reconciler: %w", err)
	}
	preds.Client = mgr.GetClient()
	succs.Reader = mgr.GetAPIReader()
	succs.Client = mgr.GetClient()
	go func() {
		if err := mgr.Start(ctx); err != nil {
			ctrl.Log.Error(err, "kubernetes reconciler stopped", "node", node)
			os.Exit(1)
		}
	}()
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
