// Command manager is the handoff controller manager: it runs the
// cluster-wide Migration reconciler (validation, scheduling to a node,
// deadlines, the source policy) and the rollout controllers of opted-in
// workloads (the DaemonSet surge: one Migration per new pod, whose
// readiness gate opens when it completes; StatefulSets and, paused by the
// Deployment webhook, Deployments updated in place)
// in the usual controller-runtime shape, with leader election for more
// than one replica, and on every replica the webhooks that inject the
// node agent's socket into opted-in pods and pause opted-in Deployments
// for an in-place rollout.
package main

import (
	"flag"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/controllers"
)

func main() {
	var (
		metricsAddr = flag.String("metrics-bind-address", ":8080", "address of the controller-runtime metrics endpoint; \"0\" disables")
		probeAddr   = flag.String("health-probe-bind-address", ":8081", "address of /healthz and /readyz")
		leader      = flag.Bool("leader-elect", false, "elect a leader, so that only one replica reconciles")
		leaderNS    = flag.String("leader-election-namespace", "", "namespace of the leader lease (default: the pod's namespace)")
		agentSel    = flag.String("agent-selector", "app.kubernetes.io/name=handoff,app.kubernetes.io/component=nodeagent", "label selector of the node agent's pods: a Migration on a node without a running one fails with AgentUnavailable (empty: wait for the deadline instead)")
		grace       = flag.Duration("agent-grace", controllers.DefaultAgentGrace, "how long past a Migration's deadline to wait for the node agent's own report before declaring DeadlineExceeded, and after scheduling for an agent pod to run on the node")
	)
	var wh webhookOptions
	wh.bindFlags()
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("manager")

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		log.Error(err, "register core types")
		os.Exit(1)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		log.Error(err, "register handoff types")
		os.Exit(1)
	}
	whOpts, rotator, err := wh.server()
	if err != nil {
		log.Error(err, "configure the webhook")
		os.Exit(2)
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:  *probeAddr,
		LeaderElection:          *leader,
		LeaderElectionID:        "manager.handoff.dev",
		LeaderElectionNamespace: *leaderNS,
		GracefulShutdownTimeout: ptr(30 * time.Second),
		WebhookServer:           webhook.NewServer(whOpts),
	})
	if err != nil {
		log.Error(err, "create manager")
		os.Exit(1)
	}
	ctx := ctrl.SetupSignalHandler()
	rec := &controllers.MigrationReconciler{AgentGrace: *grace}
	if *agentSel != "" {
		sel, err := labels.Parse(*agentSel)
		if err != nil {
			log.Error(err, "bad --agent-selector", "selector", *agentSel)
			os.Exit(2)
		}
		rec.AgentSelector = sel
	}
	if err := rec.SetupWithManager(ctx, mgr); err != nil {
		log.Error(err, "set up the migration controller")
		os.Exit(1)
	}
	if err := (&controllers.SurgeReconciler{}).SetupWithManager(mgr); err != nil {
		log.Error(err, "set up the DaemonSet surge controller")
		os.Exit(1)
	}
	if err := (&controllers.InPlaceReconciler{}).SetupWithManager(mgr); err != nil {
		log.Error(err, "set up the in-place rollout controller")
		os.Exit(1)
	}
	if err := (&controllers.InPlaceDaemonSetReconciler{}).SetupWithManager(mgr); err != nil {
		log.Error(err, "set up the in-place DaemonSet rollout controller")
		os.Exit(1)
	}
	if err := (&controllers.DeploymentReconciler{}).SetupWithManager(mgr); err != nil {
		log.Error(err, "set up the Deployment in-place rollout controller")
		os.Exit(1)
	}
	if err := (&controllers.DaemonSetChecker{}).SetupWithManager(mgr); err != nil {
		log.Error(err, "set up the DaemonSet checker")
		os.Exit(1)
	}
	if err := wh.setup(mgr, rotator); err != nil {
		log.Error(err, "set up the webhook")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "add health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "add ready check")
		os.Exit(1)
	}
	log.Info("starting manager", "leaderElection", *leader)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func ptr[T any](v T) *T { return &v }
