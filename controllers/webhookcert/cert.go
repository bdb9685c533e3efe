package webhookcert

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Keys of the Secret (type kubernetes.io/tls, so tls.crt and tls.key are
// where every tool looks). ca.crt is the caBundle: the current CA first,
// then, after the CA was renewed, the previous one while it is valid, so
// that replicas still serving a leaf of the old CA stay trusted until they
// reload.
const (
	KeyCACert  = "ca.crt"
	KeyCAKey   = "ca.key"
	KeyTLSCert = "tls.crt"
	KeyTLSKey  = "tls.key"
)

// Lifetimes; a certificate is renewed once less than a third of its
// lifetime is left.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	LeafLifetime = 365 * 24 * time.Hour
)

// backdate covers clocks of the API servers that run behind ours.
const backdate = time.Hour

// bundle is the parsed content of the Secret.
type bundle struct {
	ca     *x509.Certificate
	caKey  crypto.Signer
	caPEM  []byte // KeyCACert: ca, maybe followed by the previous CA
	leaf   *x509.Certificate
	tls    tls.Certificate
	secret map[string][]byte
}

// parseBundle reads the Secret's data; any missing or malformed part is an
// error, and the caller issues everything anew.
func parseBundle(data map[string][]byte) (*bundle, error) {
	b := &bundle{caPEM: data[KeyCACert], secret: data}
	block, _ := pem.Decode(b.caPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no CA certificate in " + KeyCACert)
	}
	var err error
	if b.ca, err = x509.ParseCertificate(block.Bytes); err != nil {
		return nil, fmt.Errorf("parse %s: %w", KeyCACert, err)
	}
	if !b.ca.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", KeyCACert)
	}
	if b.caKey, err = parseKey(data[KeyCAKey]); err != nil {
		return nil, fmt.Errorf("parse %s: %w", KeyCAKey, err)
	}
	if !publicKeysEqual(b.ca.PublicKey, b.caKey.Public()) {
		return nil, fmt.Errorf("%s does not match %s", KeyCAKey, KeyCACert)
	}
	if b.tls, err = tls.X509KeyPair(data[KeyTLSCert], data[KeyTLSKey]); err != nil {
		return nil, fmt.Errorf("parse %s and %s: %w", KeyTLSCert, KeyTLSKey, err)
	}
	b.leaf = b.tls.Leaf
	return b, nil
}

// renewal says what must be issued anew for hosts at now: the CA (and so
// the leaf), the leaf alone, or nothing.
func (b *bundle) renewal(hosts []string, now time.Time) (ca, leaf bool) {
	if due(b.ca, now) {
		return true, true
	}
	pool := x509.NewCertPool()
	pool.AddCert(b.ca)
	if _, err := b.leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false, true
	}
	if due(b.leaf, now) {
		return false, true
	}
	for _, h := range hosts {
		if b.leaf.VerifyHostname(h) != nil {
			return false, true
		}
	}
	return false, false
}

// due reports whether less than a third of c's lifetime is left at now.
func due(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(c.NotBefore)
	return now.After(c.NotAfter.Add(-life/3)) || now.Before(c.NotBefore)
}

// issue returns a bundle for hosts: prev's CA when it can stay, else a new
// one, and always a new leaf. prev may be nil.
func issue(prev *bundle, renewCA bool, hosts []string, now time.Time) (*bundle, error) {
	b := &bundle{}
	if prev != nil && !renewCA {
		b.ca, b.caKey, b.caPEM = prev.ca, prev.caKey, prev.caPEM
	} else {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate CA key: %w", err)
		}
		tmpl := &x509.Certificate{
			Subject:               pkix.Name{CommonName: "handoff-webhook-ca"},
			NotBefore:             now.Add(-backdate),
			NotAfter:              now.Add(CALifetime),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := sign(tmpl, tmpl, key.Public(), key)
		if err != nil {
			return nil, fmt.Errorf("sign CA certificate: %w", err)
		}
		if b.ca, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("parse new CA certificate: %w", err)
		}
		b.caKey = key
		b.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		if prev != nil && now.Before(prev.ca.NotAfter) {
			b.caPEM = append(b.caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: prev.ca.Raw})...)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(LeafLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := sign(tmpl, b.ca, key.Public(), b.caKey)
	if err != nil {
		return nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode serving key: %w", err)
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(b.caKey)
	if err != nil {
		return nil, fmt.Errorf("encode CA key: %w", err)
	}
	b.secret = map[string][]byte{
		KeyCACert:  b.caPEM,
		KeyCAKey:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKeyDER}),
		KeyTLSCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyTLSKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	// Parse back what goes into the Secret, so that a bundle issued here
	// and one read from the Secret are the same thing.
	return parseBundle(b.secret)
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, err1 := x509.MarshalPKIXPublicKey(a)
	be, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(ae, be)
}

// ServiceHosts are the names the API server uses for a webhook behind
// Service name in namespace.
func ServiceHosts(name, namespace string) []string {
	svc := name + "." + namespace + ".svc"
	return []string{svc, svc + ".cluster.local"}
}
