// Package testca mints X.509 certificates for tests: a throw-away certificate
// authority, leaf certificates it signs (valid, expired, not yet valid, for any
// set of names and addresses), and self-signed certificates.
//
// It exists so that the prober's unit tests and the acceptance tests (where the
// real Postfix smtp client is given the CA through smtp_tls_CAfile) can build
// every certificate situation the prober classifies — verified, untrusted,
// expired, name mismatch — without files checked into the repository, which
// would expire, and without touching the system trust store.
//
// Keys are ECDSA P-256: generating one takes microseconds, so every test can
// mint its own CA and tests stay independent and parallel. Nothing here keeps
// global state.
//
// The certificates follow the profile of RFC 5280 that both Go's crypto/x509
// and OpenSSL accept: CAs carry basicConstraints CA:TRUE and keyCertSign;
// leaves carry subjectAltName, digitalSignature and the serverAuth extended
// key usage, and their CommonName repeats the first DNS name for the sake of
// log lines (verifiers use subjectAltName).
package testca

import (
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
	"os"
	"testing"
	"time"
)

// CA is a certificate authority that signs leaf certificates. A CA made by
// New is a self-signed root, the trust anchor that clients put in their pool;
// one made by Intermediate is signed by its parent, and the leaves it signs
// carry it in their chain.
type CA struct {
	// Cert is the CA's own certificate.
	Cert *x509.Certificate
	// Key is the CA's private key.
	Key crypto.Signer
	// PEM is Cert encoded as a PEM "CERTIFICATE" block, the format of
	// Postfix's smtp_tls_CAfile and of most CA file options.
	PEM []byte

	// chain holds the certificates a server must send after its leaf for
	// a client that trusts only the root: this CA and its ancestors up to,
	// but excluding, the root. Empty for a root.
	chain [][]byte
}

// LeafOptions describe a leaf certificate. The zero value is a certificate for
// no name, valid from an hour ago for a day.
type LeafOptions struct {
	// DNSNames go into subjectAltName. The first one is also the subject's
	// CommonName.
	DNSNames []string
	// IPs go into subjectAltName, for servers reached by address.
	IPs []net.IP
	// NotBefore and NotAfter bound the validity. A zero NotBefore means one
	// hour ago (so clock skew between processes does not matter); a zero
	// NotAfter means 24 hours from now. When only one bound is given and
	// the default for the other would make the window empty, the default
	// moves so the window is 24 hours long: NotAfter in the past alone
	// gives an expired certificate, NotBefore in the future alone a
	// certificate that is not yet valid.
	NotBefore, NotAfter time.Time
}

// New creates a self-signed root CA whose subject CommonName is name (a
// default name when empty). The name shows in verification errors and in
// Postfix's logs, so naming the CA after the test helps reading them.
func New(name string) (*CA, error) {
	if name == "" {
		name = "tlspolicyd test CA"
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(name)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("testca: create CA certificate: %w", err)
	}
	return newCA(der, key, nil)
}

// MustNew is New for tests: it names the CA after the test and fails the test
// on error.
func MustNew(tb testing.TB) *CA {
	tb.Helper()
	ca, err := New(tb.Name() + " CA")
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// Intermediate creates a CA signed by ca. Leaves it signs carry the
// intermediate (and any intermediates above it) in their chain, so a client
// that trusts the root verifies them; the root's Pool is the one to trust.
func (ca *CA) Intermediate(name string) (*CA, error) {
	if name == "" {
		name = "tlspolicyd test intermediate CA"
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(name)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("testca: create intermediate certificate: %w", err)
	}
	return newCA(der, key, append([][]byte{der}, ca.chain...))
}

// Leaf signs a server certificate described by opts. The returned
// certificate's chain is the leaf followed by the intermediates between it
// and the root (none when ca is a root): a server sends it as is, and a client
// needs only the root. Its Leaf field is set.
func (ca *CA) Leaf(opts LeafOptions) (tls.Certificate, error) {
	return sign(opts, ca.Cert, ca.Key, ca.chain)
}

// MustLeaf is Leaf for tests: it fails the test on error.
func (ca *CA) MustLeaf(tb testing.TB, opts LeafOptions) tls.Certificate {
	tb.Helper()
	cert, err := ca.Leaf(opts)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// SelfSigned makes a certificate for dnsNames that signs itself and is not a
// CA, valid from an hour ago for a day: what many MX hosts present, and what
// Postfix reports as "Untrusted TLS".
func SelfSigned(dnsNames ...string) (tls.Certificate, error) {
	return sign(LeafOptions{DNSNames: dnsNames}, nil, nil, nil)
}

// Pool returns a new pool holding only ca.Cert, for tls.Config.RootCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WritePEM writes ca.PEM to a new file in dir and returns its path, for
// configuration files and Postfix's smtp_tls_CAfile. Each call makes a
// distinct file, so several CAs can share dir. The file is world-readable
// because Postfix may read it as its unprivileged user; dir must be
// searchable by that user too (t.TempDir is mode 0700 and owned by the test's
// user).
func (ca *CA) WritePEM(dir string) (string, error) {
	f, err := os.CreateTemp(dir, "testca-*.pem")
	if err != nil {
		return "", fmt.Errorf("testca: %w", err)
	}
	_, werr := f.Write(ca.PEM)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(f.Name(), 0o644)); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("testca: write %s: %w", f.Name(), err)
	}
	return f.Name(), nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testca: generate key: %w", err)
	}
	return key, nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("testca: serial number: %w", err)
	}
	return n, nil
}

// caTemplate is valid from a year ago for ten years, so that any leaf a test
// asks for (expired last month, valid next year) sits inside it.
func caTemplate(name string) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"tlspolicyd tests"}},
		NotBefore:             now.AddDate(-1, 0, 0),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}, nil
}

// newCA wraps a freshly signed CA certificate; chain is as for CA.chain.
func newCA(der []byte, key crypto.Signer, chain [][]byte) (*CA, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testca: parse CA certificate: %w", err)
	}
	ca := &CA{
		Cert:  cert,
		Key:   key,
		PEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		chain: chain,
	}
	return ca, nil
}

// sign makes a leaf for opts. A nil parent makes it self-signed.
func sign(opts LeafOptions, parent *x509.Certificate, parentKey crypto.Signer, chain [][]byte) (tls.Certificate, error) {
	key, err := newKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	sn, err := serial()
	if err != nil {
		return tls.Certificate{}, err
	}
	notBefore, notAfter := validity(time.Now(), opts.NotBefore, opts.NotAfter)
	if !notAfter.After(notBefore) {
		return tls.Certificate{}, fmt.Errorf("testca: NotAfter %v is not after NotBefore %v", notAfter, notBefore)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		DNSNames:              opts.DNSNames,
		IPAddresses:           opts.IPs,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if len(opts.DNSNames) > 0 {
		tmpl.Subject.CommonName = opts.DNSNames[0]
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testca: create leaf certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testca: parse leaf certificate: %w", err)
	}
	return tls.Certificate{
		Certificate: append([][]byte{der}, chain...),
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// validity applies the defaults documented on LeafOptions.
func validity(now, notBefore, notAfter time.Time) (time.Time, time.Time) {
	const window = 24 * time.Hour
	switch {
	case notBefore.IsZero() && notAfter.IsZero():
		return now.Add(-time.Hour), now.Add(window)
	case notBefore.IsZero():
		notBefore = now.Add(-time.Hour)
		if !notBefore.Before(notAfter) {
			notBefore = notAfter.Add(-window)
		}
	case notAfter.IsZero():
		notAfter = now.Add(window)
		if !notAfter.After(notBefore) {
			notAfter = notBefore.Add(window)
		}
	}
	return notBefore, notAfter
}
