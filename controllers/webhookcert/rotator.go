// Package webhookcert gives the manager's webhook server a serving
// certificate without cert-manager. A Secret in the manager's namespace
// holds a self-signed CA and a serving certificate for the webhook's
// Service; every replica creates it if absent (reading back the winner's
// when another replica was first), reuses it while valid, and renews what
// has less than a third of its lifetime left. The webhook server serves
// the certificate from memory (Rotator.GetCertificate, no files), and the
// CA goes into the caBundle of every entry of the
// MutatingWebhookConfiguration whenever it differs: at start, whenever the
// configuration changes, and every Interval.
package webhookcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultInterval is how often a Rotator checks the Secret and the
// caBundle when nothing wakes it sooner.
const DefaultInterval = 10 * time.Minute

// The Secret is namespaced and granted by a Role in the manager's own
// namespace (config/rbac/webhook_cert_role.yaml), never cluster-wide.
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;list;watch;patch

// Rotator keeps the webhook's serving certificate: see the package doc.
// It runs on every replica (the Service sends requests to any of them).
type Rotator struct {
	// Client writes the Secret and patches the configuration.
	Client client.Client
	// Reader reads them, uncached (the manager's APIReader), so that the
	// manager caches no Secrets cluster-wide.
	Reader client.Reader
	// Informers, when set, wake the Rotator whenever the configuration
	// changes (a reinstall that drops the caBundle, say).
	Informers cache.Informers
	// Secret is the Secret holding the CA and serving certificate.
	Secret types.NamespacedName
	// Hosts are the DNS names and IP addresses the serving certificate is
	// for (ServiceHosts for the webhook's Service); the first is its
	// common name.
	Hosts []string
	// Webhook is the MutatingWebhookConfiguration whose entries get the
	// CA as caBundle; empty patches none.
	Webhook string
	// Interval between checks; zero means DefaultInterval.
	Interval time.Duration
	// Log is where renewals and failures go.
	Log logr.Logger

	cert atomic.Pointer[tls.Certificate]
	kick chan struct{}
	// now is the clock; nil is time.Now (tests move it).
	now func() time.Time
}

// SetupWithManager adds r to mgr, with mgr's clients and cache.
func (r *Rotator) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.Reader == nil {
		r.Reader = mgr.GetAPIReader()
	}
	if r.Informers == nil {
		r.Informers = mgr.GetCache()
	}
	if r.Log.GetSink() == nil {
		r.Log = mgr.GetLogger().WithName("webhook-cert")
	}
	if err := mgr.Add(r); err != nil {
		return fmt.Errorf("add webhook certificate rotator: %w", err)
	}
	return nil
}

// TLSConfig makes the webhook server present r's certificate: pass it in
// webhook.Options.TLSOpts.
func (r *Rotator) TLSConfig(c *tls.Config) { c.GetCertificate = r.GetCertificate }

// GetCertificate returns the serving certificate, or an error until the
// first Sync has loaded it: until then every handshake fails, and with it
// the webhook server's readiness check.
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := r.cert.Load(); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no serving certificate yet from secret %s", r.Secret)
}

// NeedLeaderElection is false: every replica serves the webhook.
func (r *Rotator) NeedLeaderElection() bool { return false }

// Start syncs at once, then whenever the configuration changes and every
// Interval, until ctx ends. Failed syncs are retried sooner, from 1 s
// doubling up to Interval.
func (r *Rotator) Start(ctx context.Context) error {
	interval := r.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	r.kick = make(chan struct{}, 1)
	if err := r.watchWebhook(ctx); err != nil {
		r.Log.Error(err, "watch the webhook configuration; checking its caBundle every interval only", "interval", interval)
	}
	retry := time.Second
	for {
		wait := interval
		if err := r.Sync(ctx); err != nil && ctx.Err() == nil {
			r.Log.Error(err, "sync the webhook's serving certificate", "retryIn", retry)
			wait, retry = retry, min(2*retry, interval)
		} else {
			retry = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// watchWebhook wakes Start whenever the configuration named r.Webhook is
// added or changed.
func (r *Rotator) watchWebhook(ctx context.Context) error {
	if r.Informers == nil || r.Webhook == "" {
		return nil
	}
	inf, err := r.Informers.GetInformer(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{})
	if err != nil {
		return fmt.Errorf("informer of mutatingwebhookconfigurations: %w", err)
	}
	wake := func(obj any) {
		if o, ok := obj.(client.Object); ok && o.GetName() == r.Webhook {
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    wake,
		UpdateFunc: func(_, obj any) { wake(obj) },
	})
	if err != nil {
		return fmt.Errorf("watch mutatingwebhookconfiguration %s: %w", r.Webhook, err)
	}
	return nil
}

// Sync makes sure the Secret holds a valid CA and serving certificate,
// serves that certificate, and puts the CA into the configuration's
// caBundle.
func (r *Rotator) Sync(ctx context.Context) error {
	if len(r.Hosts) == 0 {
		return errors.New("webhook certificate: no hosts to issue it for")
	}
	b, err := r.ensureSecret(ctx)
	if err != nil {
		return err
	}
	if old := r.cert.Load(); old == nil || !bytes.Equal(old.Leaf.Raw, b.leaf.Raw) {
		r.Log.Info("serving certificate loaded", "secret", r.Secret, "notAfter", b.leaf.NotAfter, "hosts", r.Hosts)
	}
	cert := b.tls
	r.cert.Store(&cert)
	return r.patchCABundle(ctx, b.caPEM)
}

// ensureSecret returns the Secret's bundle, issuing and writing what is
// missing or due. Another replica may write the Secret at the same time:
// on AlreadyExists or Conflict it reads the Secret again and decides anew.
func (r *Rotator) ensureSecret(ctx context.Context) (*bundle, error) {
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	const attempts = 3
	for range attempts {
		var s corev1.Secret
		err := r.Reader.Get(ctx, r.Secret, &s)
		if apierrors.IsNotFound(err) {
			b, err := issue(nil, true, r.Hosts, now())
			if err != nil {
				return nil, err
			}
			s = corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: r.Secret.Namespace, Name: r.Secret.Name,
					Labels: map[string]string{"app.kubernetes.io/part-of": "handoff", "app.kubernetes.io/component": "webhook"}},
				Type: corev1.SecretTypeTLS,
				Data: b.secret,
			}
			switch err := r.Client.Create(ctx, &s); {
			case apierrors.IsAlreadyExists(err):
				continue // another replica was first: use its
			case err != nil:
				return nil, fmt.Errorf("create secret %s: %w", r.Secret, err)
			}
			r.Log.Info("created the webhook's CA and serving certificate", "secret", r.Secret, "hosts", r.Hosts)
			return b, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get secret %s: %w", r.Secret, err)
		}

		prev, perr := parseBundle(s.Data)
		renewCA, renewLeaf := true, true
		if perr == nil {
			renewCA, renewLeaf = prev.renewal(r.Hosts, now())
		}
		if !renewLeaf {
			return prev, nil
		}
		b, err := issue(prev, renewCA, r.Hosts, now())
		if err != nil {
			return nil, err
		}
		s.Data = b.secret
		switch err := r.Client.Update(ctx, &s); {
		case apierrors.IsConflict(err):
			continue // another replica renewed it: use its
		case err != nil:
			return nil, fmt.Errorf("update secret %s: %w", r.Secret, err)
		}
		r.Log.Info("renewed the webhook's certificate", "secret", r.Secret, "ca", renewCA, "unreadable", perr, "hosts", r.Hosts)
		return b, nil
	}
	return nil, fmt.Errorf("secret %s: written by someone else %d times in a row", r.Secret, attempts)
}

// patchCABundle sets the caBundle of every entry of the configuration to
// ca, where it differs. A missing configuration is not an error: the
// webhook is not installed (yet), and its creation wakes Start.
func (r *Rotator) patchCABundle(ctx context.Context, ca []byte) error {
	if r.Webhook == "" {
		return nil
	}
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	if err := r.Reader.Get(ctx, client.ObjectKey{Name: r.Webhook}, &wh); err != nil {
		if apierrors.IsNotFound(err) {
			r.Log.V(1).Info("no webhook configuration to patch yet", "name", r.Webhook)
			return nil
		}
		return fmt.Errorf("get mutatingwebhookconfiguration %s: %w", r.Webhook, err)
	}
	orig := wh.DeepCopy()
	changed := false
	for i := range wh.Webhooks {
		if !bytes.Equal(wh.Webhooks[i].ClientConfig.CABundle, ca) {
			wh.Webhooks[i].ClientConfig.CABundle = ca
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := r.Client.Patch(ctx, &wh, client.StrategicMergeFrom(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("patch caBundle of mutatingwebhookconfiguration %s: %w", r.Webhook, err)
	}
	r.Log.Info("patched the caBundle", "mutatingwebhookconfiguration", r.Webhook, "webhooks", len(wh.Webhooks))
	return nil
}
