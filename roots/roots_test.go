package roots

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// verifies reports whether a leaf of ca for name verifies against pool.
func verifies(t *testing.T, ca *testca.CA, pool *x509.CertPool) bool {
	t.Helper()
	leaf := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mta-sts.example.test"}})
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "mta-sts.example.test"})
	return err == nil
}

// The file's certificates are added to the system's, which stay trusted.
func TestLoadAddsToSystem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	system, extra := testca.MustNew(t), testca.MustNew(t)
	path, err := extra.WritePEM(dir)
	if err != nil {
		t.Fatal(err)
	}
	systemPool := func() (*x509.CertPool, error) { return system.Pool(), nil }
	pool, err := load(systemPool, path)
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(t, extra, pool) || !verifies(t, system, pool) {
		t.Error("a leaf of the CA file or of the system roots does not verify")
	}
	pool, err = load(systemPool, "")
	if err != nil || !verifies(t, system, pool) || verifies(t, extra, pool) {
		t.Errorf("no file: %v; want the system roots alone", err)
	}
}

func TestLoadSystem(t *testing.T) {
	t.Parallel()
	if _, err := Load(""); err != nil {
		t.Errorf("system roots alone: %v", err)
	}
}

// A system pool that cannot be read fails, saying what to do, rather than
// giving a pool that trusts nothing.
func TestLoadSystemFails(t *testing.T) {
	t.Parallel()
	cause := errors.New("no roots here")
	pool, err := load(func() (*x509.CertPool, error) { return nil, cause }, "")
	if pool != nil || !errors.Is(err, cause) || !strings.Contains(err.Error(), "ca-certificates") {
		t.Errorf("load = %v, %v; want an error that wraps the cause and names ca-certificates", pool, err)
	}
}

func TestLoadBadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	if _, err := Load(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v, want a not-exist error naming it", err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(junk); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("file without certificates: %v, want an error naming it", err)
	}
	// Errors leave the configuration key to the caller.
	if _, err := Load(junk); err != nil && strings.Contains(err.Error(), "ca_file") {
		t.Errorf("error %q names a configuration key", err)
	}
}
