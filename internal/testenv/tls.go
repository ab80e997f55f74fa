package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a throw-away certificate authority with one server certificate
// (for 127.0.0.1) and one client certificate, written as PEM files.
type PKI struct {
	CA                    string // the CA certificate
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	OtherCA               string // a second CA that signed nothing here
	Pool                  *x509.CertPool
	Client                tls.Certificate
}

// NewPKI makes a PKI in a temporary directory.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	p := &PKI{Pool: x509.NewCertPool()}
	caCert, caKey := newCert(t, nil, nil, &x509.Certificate{
		Subject: pkix.Name{CommonName: "depot test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	p.Pool.AddCert(caCert)
	p.CA = writePEM(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw)
	other, _ := newCert(t, nil, nil, &x509.Certificate{
		Subject: pkix.Name{CommonName: "another CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	})
	p.OtherCA = writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw)
	srv, srvKey := newCert(t, caCert, caKey, &x509.Certificate{
		Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	p.ServerCert = writePEM(t, dir, "server.pem", "CERTIFICATE", srv.Raw)
	p.ServerKey = writeKey(t, dir, "server-key.pem", srvKey)
	cl, clKey := newCert(t, caCert, caKey, &x509.Certificate{
		Subject: pkix.Name{CommonName: "depot"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p.ClientCert = writePEM(t, dir, "client.pem", "CERTIFICATE", cl.Raw)
	p.ClientKey = writeKey(t, dir, "client-key.pem", clKey)
	var err error
	if p.Client, err = tls.LoadX509KeyPair(p.ClientCert, p.ClientKey); err != nil {
		t.Fatal(err)
	}
	return p
}

// ClientTLS is a client configuration that trusts the CA and presents the
// client certificate.
func (p *PKI) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.Pool, Certificates: []tls.Certificate{p.Client}, MinVersion: tls.VersionTLS12}
}

var serial int64

// newCert makes a certificate from tmpl, signed by parent (self-signed when
// parent is nil), valid for a day.
func newCert(t testing.TB, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeKey(t testing.TB, dir, name string, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "EC PRIVATE KEY", der)
}

// EtcdTLS runs a single-member etcd that serves clients over TLS only and
// requires a client certificate signed by the PKI's CA. It returns the
// https:// client URL.
func EtcdTLS(t testing.TB, p *PKI) string {
	t.Helper()
	Need(t, "etcd")
	url := fmt.Sprintf("https://127.0.0.1:%d", FreePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	startEtcd(t, "tls", url, peer, "tls="+peer, fmt.Sprintf("depot-test-tls-%d", time.Now().UnixNano()),
		"--cert-file", p.ServerCert, "--key-file", p.ServerKey,
		"--client-cert-auth", "--trusted-ca-file", p.CA)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: p.ClientTLS()}}
	waitHTTP(t, c, url+"/health", "etcd (TLS)", 20*time.Second)
	return url
}
