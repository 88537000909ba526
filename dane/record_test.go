package dane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testCert returns a self-signed certificate and its SubjectPublicKeyInfo,
// both DER, minted for the test.
func testCert(t *testing.T) (cert, spki []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.example.test"},
		DNSNames:     []string{"mx.example.test"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(0, 0).Add(24 * time.Hour),
	}
	cert, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	spki, err = x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return cert, spki
}

func TestRecordUsable(t *testing.T) {
	t.Parallel()
	cert, spki := testCert(t)
	d32 := make([]byte, 32)
	d64 := make([]byte, 64)
	for i := range d64 {
		d64[i] = byte(i + 1)
	}
	copy(d32, d64)

	tests := []struct {
		name string
		rec  Record
		want error // nil: usable
	}{
		{"DANE-EE SPKI SHA-256", Record{3, 1, 1, d32}, nil},
		{"DANE-EE cert SHA-256", Record{3, 0, 1, d32}, nil},
		{"DANE-EE SPKI SHA-512", Record{3, 1, 2, d64}, nil},
		{"DANE-TA cert SHA-256", Record{2, 0, 1, d32}, nil},
		{"DANE-TA SPKI SHA-512", Record{2, 1, 2, d64}, nil},
		{"DANE-TA full cert", Record{2, 0, 0, cert}, nil},
		{"DANE-EE full cert", Record{3, 0, 0, cert}, nil},
		{"DANE-EE full SPKI", Record{3, 1, 0, spki}, nil},
		{"DANE-TA full SPKI", Record{2, 1, 0, spki}, nil},

		{"PKIX-TA", Record{0, 0, 1, d32}, ErrPKIXUsage},
		{"PKIX-EE", Record{1, 1, 1, d32}, ErrPKIXUsage},
		{"usage 4", Record{4, 1, 1, d32}, ErrUsage},
		{"usage 255 (private)", Record{255, 1, 1, d32}, ErrUsage},
		{"selector 2", Record{3, 2, 1, d32}, ErrSelector},
		{"selector 255", Record{3, 255, 1, d32}, ErrSelector},
		{"matching type 3", Record{3, 1, 3, d32}, ErrMatchingType},
		{"matching type 255", Record{3, 1, 255, d32}, ErrMatchingType},
		{"SHA-256 of 31 bytes", Record{3, 1, 1, d32[:31]}, ErrDigestLength},
		{"SHA-256 of 33 bytes", Record{3, 1, 1, append(d32[:32:32], 0)}, ErrDigestLength},
		{"SHA-256 with a SHA-512 digest", Record{3, 1, 1, d64}, ErrDigestLength},
		{"SHA-512 with a SHA-256 digest", Record{3, 1, 2, d32}, ErrDigestLength},
		{"SHA-256 empty", Record{3, 1, 1, nil}, ErrDigestLength},
		{"full empty", Record{3, 1, 0, nil}, ErrMalformed},
		{"full cert not DER", Record{3, 0, 0, []byte("not a certificate")}, ErrMalformed},
		{"full cert given an SPKI", Record{3, 0, 0, spki}, ErrMalformed},
		{"full SPKI given a cert", Record{3, 1, 0, cert}, ErrMalformed},
		{"full cert with trailing bytes", Record{3, 0, 0, append(append([]byte{}, cert...), 0)}, ErrMalformed},
		{"full SPKI truncated", Record{3, 1, 0, spki[:len(spki)-1]}, ErrMalformed},
		// The usage is checked first: a PKIX record is unusable whatever
		// else is wrong with it.
		{"PKIX-EE with bad digest", Record{1, 1, 1, d64}, ErrPKIXUsage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.rec.Usable()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("%v: Usable() = %v, want usable", tc.rec, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("%v: Usable() = %v, want %v", tc.rec, err, tc.want)
			}
		})
	}
}

func TestRecordString(t *testing.T) {
	t.Parallel()
	r := Record{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{0xab, 0x01}}
	if got, want := r.String(), "3 1 1 ab01"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestRecordFromRR(t *testing.T) {
	t.Parallel()
	rr, err := dns.NewRR("_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + strings.Repeat("AB", 32))
	if err != nil {
		t.Fatal(err)
	}
	r := recordFromRR(rr.(*dns.TLSA))
	if r.Usage != 3 || r.Selector != 1 || r.MatchingType != 1 || len(r.Data) != 32 || r.Data[0] != 0xab {
		t.Fatalf("recordFromRR = %+v", r)
	}
	if err := r.Usable(); err != nil {
		t.Fatalf("Usable() = %v", err)
	}
	// Data that is not hexadecimal cannot come off the wire, but a record
	// built in code may hold it: it is unusable, not a panic.
	bad := recordFromRR(&dns.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Certificate: "zz"})
	if err := bad.Usable(); !errors.Is(err, ErrDigestLength) {
		t.Fatalf("Usable() of undecodable data = %v", err)
	}
}
