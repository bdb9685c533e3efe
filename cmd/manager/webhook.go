package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/handoff-dev/handoff/controllers/deployhook"
	"github.com/handoff-dev/handoff/controllers/inject"
	"github.com/handoff-dev/handoff/controllers/webhookcert"
)

// webhookOptions are the flags of the pod-injection webhook.
type webhookOptions struct {
	port          int
	certDir       string
	secret        string
	service       string
	namespace     string
	configuration string
	socketDir     string
	socketGroup   int64
}

func (o *webhookOptions) bindFlags() {
	flag.IntVar(&o.port, "webhook-port", 9443, "port of the pod-injection webhook (HTTPS, every replica); 0 turns the webhook off")
	flag.StringVar(&o.certDir, "webhook-cert-dir", "", "directory with the webhook's tls.crt and tls.key (e.g. from cert-manager), reloaded when they change; empty: the manager issues its own into --webhook-cert-secret and patches the caBundle of --webhook-configuration")
	flag.StringVar(&o.secret, "webhook-cert-secret", "handoff-webhook-cert", "Secret, in the manager's namespace, holding the webhook's self-signed CA and serving certificate")
	flag.StringVar(&o.service, "webhook-service", "handoff-webhook", "Service in front of the webhook, in the manager's namespace: the certificate is issued for <service>.<namespace>.svc")
	flag.StringVar(&o.namespace, "webhook-namespace", "", "namespace of the Secret and the Service (default: the pod's own, from its service account)")
	flag.StringVar(&o.configuration, "webhook-configuration", "handoff-webhook", "MutatingWebhookConfiguration whose caBundle the manager keeps")
	flag.StringVar(&o.socketDir, "socket-dir", "/run/handoff", "host directory of the node agent's socket, injected into opted-in pods (the agent's socket is <dir>/agent.sock)")
	flag.Int64Var(&o.socketGroup, "socket-group", 0, "group of the node agent's socket, injected into opted-in pods' supplementalGroups")
}

// server returns the webhook server's options, and the Rotator that
// serves its certificate unless it comes from --webhook-cert-dir.
func (o *webhookOptions) server() (webhook.Options, *webhookcert.Rotator, error) {
	if o.port == 0 {
		return webhook.Options{Port: -1}, nil, nil
	}
	if !strings.HasPrefix(o.socketDir, "/") {
		return webhook.Options{}, nil, fmt.Errorf("--socket-dir %q is not an absolute path", o.socketDir)
	}
	if o.certDir != "" {
		return webhook.Options{Port: o.port, CertDir: o.certDir}, nil, nil
	}
	ns := o.namespace
	if ns == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return webhook.Options{}, nil, fmt.Errorf("the manager's namespace (set --webhook-namespace): %w", err)
		}
		ns = strings.TrimSpace(string(b))
	}
	if o.secret == "" || o.service == "" {
		return webhook.Options{}, nil, errors.New("--webhook-cert-secret and --webhook-service must be set without --webhook-cert-dir")
	}
	rot := &webhookcert.Rotator{
		Secret:  types.NamespacedName{Namespace: ns, Name: o.secret},
		Hosts:   webhookcert.ServiceHosts(o.service, ns),
		Webhook: o.configuration,
	}
	return webhook.Options{Port: o.port, TLSOpts: []func(*tls.Config){rot.TLSConfig}}, rot, nil
}

// setup registers the pod and Deployment webhooks, the certificate's Rotator (rot may be
// nil) and a readiness check that passes once the server completes TLS
// handshakes, that is once it has a certificate.
func (o *webhookOptions) setup(mgr ctrl.Manager, rot *webhookcert.Rotator) error {
	if o.port == 0 {
		return nil
	}
	if rot != nil {
		if err := rot.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	wh := &inject.Webhook{
		Config:   inject.Config{SocketDir: o.socketDir, SocketGroup: o.socketGroup},
		Recorder: mgr.GetEventRecorder(inject.Name),
	}
	wh.Register(mgr.GetWebhookServer())
	(&deployhook.Webhook{Recorder: mgr.GetEventRecorder(deployhook.Name)}).Register(mgr.GetWebhookServer())
	if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
		return fmt.Errorf("add webhook readiness check: %w", err)
	}
	return nil
}
