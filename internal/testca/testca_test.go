package testca

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// verify checks cert against roots for name the way a TLS client would.
func verify(cert tls.Certificate, roots *x509.CertPool, name string) error {
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	_, err := cert.Leaf.Verify(x509.VerifyOptions{
		DNSName:       name,
		Roots:         roots,
		Intermediates: inter,
	})
	return err
}

func TestLeafVerifies(t *testing.T) {
	t.Parallel()
	ca := MustNew(t)
	cert := ca.MustLeaf(t, LeafOptions{DNSNames: []string{"mx.example.test", "mx2.example.test"}})
	if len(cert.Certificate) != 1 {
		t.Errorf("chain length = %d, want 1 (leaf only)", len(cert.Certificate))
	}
	if cert.Leaf.Subject.CommonName != "mx.example.test" {
		t.Errorf("CommonName = %q", cert.Leaf.Subject.CommonName)
	}
	for _, name := range []string{"mx.example.test", "mx2.example.test"} {
		if err := verify(cert, ca.Pool(), name); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	var hostErr x509.HostnameError
	if err := verify(cert, ca.Pool(), "other.example.test"); !errors.As(err, &hostErr) {
		t.Errorf("verify wrong name: got %v, want x509.HostnameError", err)
	}
	var uaErr x509.UnknownAuthorityError
	if err := verify(cert, MustNew(t).Pool(), "mx.example.test"); !errors.As(err, &uaErr) {
		t.Errorf("verify against another CA: got %v, want x509.UnknownAuthorityError", err)
	}
}

func TestLeafIP(t *testing.T) {
	t.Parallel()
	ca := MustNew(t)
	cert := ca.MustLeaf(t, LeafOptions{IPs: []net.IP{net.ParseIP("127.0.0.2")}})
	if err := verify(cert, ca.Pool(), "127.0.0.2"); err != nil {
		t.Errorf("verify IP: %v", err)
	}
}

func TestValidity(t *testing.T) {
	t.Parallel()
	ca := MustNew(t)
	now := time.Now()
	tests := []struct {
		name   string
		opts   LeafOptions
		reason x509.InvalidReason // meaningful only when !valid
		valid  bool
	}{
		{name: "default", valid: true},
		{name: "expired", opts: LeafOptions{NotAfter: now.Add(-time.Hour)}, reason: x509.Expired},
		{name: "not yet valid", opts: LeafOptions{NotBefore: now.Add(time.Hour)}, reason: x509.Expired},
		{name: "explicit window", opts: LeafOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(48 * time.Hour)}, valid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.DNSNames = []string{"mx.example.test"}
			cert := ca.MustLeaf(t, tt.opts)
			if !cert.Leaf.NotAfter.After(cert.Leaf.NotBefore) {
				t.Fatalf("empty window %v .. %v", cert.Leaf.NotBefore, cert.Leaf.NotAfter)
			}
			err := verify(cert, ca.Pool(), "mx.example.test")
			if tt.valid {
				if err != nil {
					t.Errorf("verify: %v", err)
				}
				return
			}
			var inv x509.CertificateInvalidError
			if !errors.As(err, &inv) || inv.Reason != tt.reason {
				t.Errorf("verify: got %v, want CertificateInvalidError reason %v", err, tt.reason)
			}
		})
	}
}

func TestLeafEmptyWindow(t *testing.T) {
	t.Parallel()
	now := time.Now()
	_, err := MustNew(t).Leaf(LeafOptions{NotBefore: now, NotAfter: now.Add(-time.Hour)})
	if err == nil {
		t.Fatal("Leaf with NotAfter before NotBefore: no error")
	}
}

func TestSelfSigned(t *testing.T) {
	t.Parallel()
	cert, err := SelfSigned("mx.example.test")
	if err != nil {
		t.Fatal(err)
	}
	var uaErr x509.UnknownAuthorityError
	if err := verify(cert, x509.NewCertPool(), "mx.example.test"); !errors.As(err, &uaErr) {
		t.Errorf("verify self-signed: got %v, want x509.UnknownAuthorityError", err)
	}
	if cert.Leaf.IsCA {
		t.Error("self-signed leaf is a CA")
	}
	// It does verify against itself as the anchor: proves the signature.
	self := x509.NewCertPool()
	self.AddCert(cert.Leaf)
	if err := verify(cert, self, "mx.example.test"); err != nil {
		t.Errorf("verify against itself: %v", err)
	}
}

func TestIntermediate(t *testing.T) {
	t.Parallel()
	root := MustNew(t)
	inter, err := root.Intermediate("inter")
	if err != nil {
		t.Fatal(err)
	}
	inter2, err := inter.Intermediate("inter2")
	if err != nil {
		t.Fatal(err)
	}
	cert := inter2.MustLeaf(t, LeafOptions{DNSNames: []string{"mx.example.test"}})
	if len(cert.Certificate) != 3 {
		t.Fatalf("chain length = %d, want 3", len(cert.Certificate))
	}
	if err := verify(cert, root.Pool(), "mx.example.test"); err != nil {
		t.Errorf("verify through intermediates: %v", err)
	}
	// A server that forgets its intermediates cannot be verified.
	cert.Certificate = cert.Certificate[:1]
	var uaErr x509.UnknownAuthorityError
	if err := verify(cert, root.Pool(), "mx.example.test"); !errors.As(err, &uaErr) {
		t.Errorf("verify without intermediates: got %v, want x509.UnknownAuthorityError", err)
	}
}

// TestHandshake runs a real TLS handshake over an in-memory pipe with the
// minted certificate, as a fake MX server would.
func TestHandshake(t *testing.T) {
	t.Parallel()
	ca := MustNew(t)
	cert := ca.MustLeaf(t, LeafOptions{DNSNames: []string{"mx.example.test"}})
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	srvErr := make(chan error, 1)
	go func() {
		srvErr <- tls.Server(c1, &tls.Config{Certificates: []tls.Certificate{cert}}).Handshake()
	}()
	client := tls.Client(c2, &tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"})
	if err := client.Handshake(); err != nil {
		t.Errorf("client handshake: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Errorf("server handshake: %v", err)
	}
}

func TestWritePEM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := MustNew(t)
	path, err := ca.WritePEM(dir)
	if err != nil {
		t.Fatal(err)
	}
	path2, err := MustNew(t).WritePEM(dir)
	if err != nil {
		t.Fatal(err)
	}
	if path == path2 {
		t.Errorf("two CAs written to the same file %s", path)
	}
	if filepath.Dir(path) != dir {
		t.Errorf("written to %s, not under %s", path, dir)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, ca.PEM) {
		t.Error("file content differs from ca.PEM")
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || !bytes.Equal(block.Bytes, ca.Cert.Raw) {
		t.Error("file does not hold the CA certificate")
	}
}

// TestOpenSSLAccepts checks that OpenSSL, which Postfix and Exim use, verifies
// a minted chain with the CA file, and rejects an expired leaf.
func TestOpenSSLAccepts(t *testing.T) {
	t.Parallel()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	root := MustNew(t)
	caFile, err := root.WritePEM(dir)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.Intermediate("inter")
	if err != nil {
		t.Fatal(err)
	}
	writeChain := func(name string, cert tls.Certificate) (leaf, untrusted string) {
		leaf = filepath.Join(dir, name+"-leaf.pem")
		untrusted = filepath.Join(dir, name+"-chain.pem")
		var chain []byte
		for _, der := range cert.Certificate[1:] {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		if err := os.WriteFile(leaf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(untrusted, chain, 0o644); err != nil {
			t.Fatal(err)
		}
		return leaf, untrusted
	}
	good, goodChain := writeChain("good", inter.MustLeaf(t, LeafOptions{DNSNames: []string{"mx.example.test"}}))
	out, err := exec.Command(openssl, "verify", "-CAfile", caFile, "-untrusted", goodChain,
		"-purpose", "sslserver", "-verify_hostname", "mx.example.test", good).CombinedOutput()
	if err != nil {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}
	expired, _ := writeChain("expired", root.MustLeaf(t, LeafOptions{
		DNSNames: []string{"mx.example.test"}, NotAfter: time.Now().Add(-time.Hour),
	}))
	out, err = exec.Command(openssl, "verify", "-CAfile", caFile, expired).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("expired")) {
		t.Errorf("openssl verify expired: err %v, output %s", err, out)
	}
}
