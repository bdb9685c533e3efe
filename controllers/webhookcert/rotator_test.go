package webhookcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

var secretKey = types.NamespacedName{Namespace: "handoff-system", Name: "handoff-webhook-cert"}

func webhookConfig() *admissionregistrationv1.MutatingWebhookConfiguration {
	entry := func(name string) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{Name: name, ClientConfig: admissionregistrationv1.WebhookClientConfig{
			Service: &admissionregistrationv1.ServiceReference{Namespace: "handoff-system", Name: "handoff-webhook"}}}
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "handoff-webhook"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{entry("pod.inject.handoff.dev"), entry("namespace.inject.handoff.dev")}}
}

// rotator is a Rotator on a fake API whose clock the test moves.
func rotator(t *testing.T, c client.Client, now *time.Time) *Rotator {
	t.Helper()
	return &Rotator{Client: c, Reader: c, Secret: secretKey, Hosts: ServiceHosts("handoff-webhook", "handoff-system"),
		Webhook: "handoff-webhook", now: func() time.Time { return *now }}
}

func fakeClient(interceptors interceptor.Funcs, objs ...client.Object) client.WithWatch {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).WithInterceptorFuncs(interceptors).Build()
}

func getSecret(t *testing.T, c client.Client) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	if err := c.Get(context.Background(), secretKey, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func caBundles(t *testing.T, c client.Client) [][]byte {
	t.Helper()
	var wh admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(context.Background(), client.ObjectKey{Name: "handoff-webhook"}, &wh); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, w := range wh.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

// checkServes asserts that the served certificate verifies for every host
// against the configuration's caBundle at now.
func checkServes(t *testing.T, r *Rotator, bundle []byte, now time.Time) *x509.Certificate {
	t.Helper()
	cert, err := r.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatalf("no certificate served: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		t.Fatalf("caBundle holds no certificate")
	}
	for _, h := range r.Hosts {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: pool, CurrentTime: now}); err != nil {
			t.Errorf("served certificate does not verify for %s against the caBundle: %v", h, err)
		}
	}
	return cert.Leaf
}

func TestSyncCreatesReusesAndRenews(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := fakeClient(interceptor.Funcs{}, webhookConfig())
	r := rotator(t, c, &now)
	if _, err := r.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Fatalf("a certificate is served before the first sync")
	}
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s := getSecret(t, c)
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("secret type %q", s.Type)
	}
	bundles := caBundles(t, c)
	for i, b := range bundles {
		if !bytes.Equal(b, s.Data[KeyCACert]) {
			t.Errorf("webhook %d: caBundle is not the Secret's ca.crt", i)
		}
	}
	leaf := checkServes(t, r, bundles[0], now)
	if len(leaf.IPAddresses) != 0 || leaf.Subject.CommonName != "handoff-webhook.handoff-system.svc" {
		t.Errorf("leaf CN %q IPs %v", leaf.Subject.CommonName, leaf.IPAddresses)
	}

	// A restart (a new Rotator) half a year on reuses the Secret as is.
	now = now.Add(180 * 24 * time.Hour)
	r2 := rotator(t, c, &now)
	if err := r2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s2 := getSecret(t, c); s2.ResourceVersion != s.ResourceVersion {
		t.Errorf("a valid Secret was rewritten")
	}
	if l := checkServes(t, r2, bundles[0], now); !l.Equal(leaf) {
		t.Errorf("a new replica serves another certificate than the Secret's")
	}

	// With less than a third of its year left, the leaf is renewed under
	// the same CA: the caBundle stays.
	now = now.Add(70 * 24 * time.Hour)
	if err := r2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s3 := getSecret(t, c)
	if !bytes.Equal(s3.Data[KeyCACert], s.Data[KeyCACert]) || bytes.Equal(s3.Data[KeyTLSCert], s.Data[KeyTLSCert]) {
		t.Errorf("leaf renewal: CA changed %v, leaf changed %v; want the CA kept and the leaf new",
			!bytes.Equal(s3.Data[KeyCACert], s.Data[KeyCACert]), !bytes.Equal(s3.Data[KeyTLSCert], s.Data[KeyTLSCert]))
	}
	if l := checkServes(t, r2, caBundles(t, c)[0], now); l.Equal(leaf) || l.NotAfter.Before(now.Add(300*24*time.Hour)) {
		t.Errorf("renewed leaf not served, or not valid a year: until %v", l.NotAfter)
	}
	// The other replica still serves the old leaf, under the same CA.
	checkServes(t, r, caBundles(t, c)[0], now)

	// Seven years on, the CA is renewed; the bundle keeps the old CA, so
	// that replicas serving a leaf of it stay trusted until they reload.
	now = now.Add(7 * 365 * 24 * time.Hour)
	oldLeaf, _ := r2.GetCertificate(nil)
	if err := r2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s4 := getSecret(t, c)
	var cas []*x509.Certificate
	for rest := s4.Data[KeyCACert]; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		cas = append(cas, ca)
	}
	if len(cas) != 2 || !bytes.Contains(s.Data[KeyCACert], pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cas[1].Raw})) {
		t.Fatalf("after CA renewal ca.crt holds %d certificates, want the new CA and the old one", len(cas))
	}
	bundle := caBundles(t, c)[0]
	checkServes(t, r2, bundle, now)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	if _, err := oldLeaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now.Add(-7 * 365 * 24 * time.Hour).Add(71 * 24 * time.Hour)}); err != nil {
		t.Errorf("a leaf of the old CA no longer verifies against the bundle: %v", err)
	}
}

func TestSyncRenewsForNewHostsAndRepairsGarbage(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	c := fakeClient(interceptor.Funcs{}, webhookConfig())
	r := rotator(t, c, &now)
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	ca := getSecret(t, c).Data[KeyCACert]

	r.Hosts = append(r.Hosts, "127.0.0.1")
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	cert, _ := r.GetCertificate(nil)
	if len(cert.Leaf.IPAddresses) != 1 || !cert.Leaf.IPAddresses[0].Equal([]byte{127, 0, 0, 1}) {
		t.Errorf("leaf IPs %v after adding host 127.0.0.1", cert.Leaf.IPAddresses)
	}
	if !bytes.Equal(getSecret(t, c).Data[KeyCACert], ca) {
		t.Errorf("a new host renewed the CA")
	}

	s := getSecret(t, c)
	s.Data[KeyTLSKey] = []byte("not a key")
	if err := c.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := parseBundle(getSecret(t, c).Data); err != nil {
		t.Errorf("a damaged Secret was not repaired: %v", err)
	}
}

// TestSyncCreateRace: another replica creates the Secret between our Get
// and Create; we serve and publish its certificate, not ours.
func TestSyncCreateRace(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	other := fakeClient(interceptor.Funcs{})
	if err := rotator(t, other, &now).Sync(ctx); err != nil {
		t.Fatal(err)
	}
	theirs := getSecret(t, other)
	theirs.ResourceVersion = ""

	raced := false
	c := fakeClient(interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		if _, ok := obj.(*corev1.Secret); ok && !raced {
			raced = true
			if err := c.Create(ctx, theirs.DeepCopy()); err != nil {
				return err
			}
		}
		return c.Create(ctx, obj, opts...)
	}}, webhookConfig())
	r := rotator(t, c, &now)
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !raced {
		t.Fatalf("the race did not happen")
	}
	got := getSecret(t, c)
	if !bytes.Equal(got.Data[KeyCACert], theirs.Data[KeyCACert]) || !bytes.Equal(caBundles(t, c)[0], theirs.Data[KeyCACert]) {
		t.Errorf("lost the create race but kept its own CA")
	}
	served, _ := r.GetCertificate(nil)
	if !bytes.Equal(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: served.Leaf.Raw}), theirs.Data[KeyTLSCert]) {
		t.Errorf("serves its own certificate, not the Secret's")
	}
}

// TestSyncWithoutConfiguration: the certificate is served even before the
// configuration exists (kubectl apply order), and patched once it does.
func TestSyncWithoutConfiguration(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	c := fakeClient(interceptor.Funcs{})
	r := rotator(t, c, &now)
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetCertificate(nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, webhookConfig()); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for i, b := range caBundles(t, c) {
		if !bytes.Equal(b, getSecret(t, c).Data[KeyCACert]) {
			t.Errorf("webhook %d: caBundle not patched", i)
		}
	}
}
