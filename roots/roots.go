// Package roots loads the trust anchors that the daemon verifies servers'
// certificates with (mail servers when probing, MTA-STS policy hosts when
// fetching, RFC 8461 section 3.3): the system's roots plus the PEM
// certificates of an optional file, such as a private CA's.
package roots

import (
	"crypto/x509"
	"fmt"
	"os"
)

// Load returns the system's trust anchors plus the PEM certificates in
// caFile; an empty caFile gives the system's alone.
//
// A system pool that cannot be read is an error rather than an empty pool:
// trusting nothing would make every verification fail, reported far from
// its cause. A caFile without any PEM certificate is an error too, naming
// the file. Errors do not name a configuration key: callers add the one
// that set caFile.
func Load(caFile string) (*x509.CertPool, error) {
	return load(x509.SystemCertPool, caFile)
}

// load is Load with the system pool injected, so that tests can make it
// fail.
func load(system func() (*x509.CertPool, error), caFile string) (*x509.CertPool, error) {
	pool, err := system()
	if err != nil {
		return nil, fmt.Errorf("cannot read the system trust anchors (install the ca-certificates package or its equivalent): %w", err)
	}
	if caFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return pool, nil
}
