package dane

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/miekg/dns"
)

// recordErrs are the reasons Usable may give, one at a time.
var recordErrs = []error{ErrPKIXUsage, ErrUsage, ErrSelector, ErrMatchingType, ErrDigestLength, ErrMalformed}

// FuzzRecord checks TLSA record handling on arbitrary fields and data:
//   - Usable accepts exactly the records RFC 7672 lets SMTP use (DANE-TA or
//     DANE-EE, selector Cert or SPKI, a digest of the right length or
//     full DER data), and otherwise gives one of its sentinel reasons;
//   - full data that crypto/x509 parses as a certificate or a public key
//     is never rejected as malformed, since the TLS client would match it;
//   - the presentation form parses back, as a DNS resource record, to the
//     same record, and presentation counts usable records as Usable does;
//   - association data from DNS that is not hexadecimal decodes to none,
//     which no record can use.
//
// The seeds are in testdata/fuzz/FuzzRecord.
func FuzzRecord(f *testing.F) {
	f.Fuzz(func(t *testing.T, usage, selector, matching uint8, data []byte, dnsHex string) {
		r := Record{Usage: usage, Selector: selector, MatchingType: matching, Data: data}
		err := r.Usable()
		checkUsable(t, r, err)

		if len(data) > 0 {
			rr, perr := dns.NewRR("mx.example.test. 3600 IN TLSA " + r.String())
			if perr != nil {
				t.Fatalf("presentation %q does not parse: %v", r.String(), perr)
			}
			back := recordFromRR(rr.(*dns.TLSA))
			if back.Usage != usage || back.Selector != selector || back.MatchingType != matching || !bytes.Equal(back.Data, data) {
				t.Fatalf("presentation %q parses back as %+v", r.String(), back)
			}
		}

		out, usable, firstErr := presentation([]Record{r, r})
		if len(out) != 2 || out[0] != r.String() || (err == nil) != (usable == 2) || (err == nil) == (usable == 0) ||
			(err == nil) != (firstErr == nil) || err != nil && firstErr.Error() != err.Error() {
			t.Fatalf("presentation of %v twice: %q, %d usable, %v; Usable says %v", r, out, usable, firstErr, err)
		}

		fromDNS := recordFromRR(&dns.TLSA{Usage: usage, Selector: selector, MatchingType: matching, Certificate: dnsHex})
		if want, herr := hex.DecodeString(dnsHex); herr != nil {
			if fromDNS.Data != nil || fromDNS.Usable() == nil {
				t.Fatalf("association data %q is not hexadecimal, yet decoded to %x (usable: %v)", dnsHex, fromDNS.Data, fromDNS.Usable())
			}
		} else if !bytes.Equal(fromDNS.Data, want) {
			t.Fatalf("association data %q decoded to %x, want %x", dnsHex, fromDNS.Data, want)
		}
	})
}

// checkUsable checks Usable's verdict err on r against RFC 7672's rules.
func checkUsable(t *testing.T, r Record, err error) {
	t.Helper()
	matched := 0
	for _, sentinel := range recordErrs {
		if errors.Is(err, sentinel) {
			matched++
		}
	}
	if err != nil && matched != 1 {
		t.Fatalf("%v: error %q matches %d sentinels, want 1", r, err, matched)
	}
	daneUsage := r.Usage == UsageDANETA || r.Usage == UsageDANEEE
	knownSelector := r.Selector == SelectorCert || r.Selector == SelectorSPKI
	var shapeOK bool
	switch r.MatchingType {
	case MatchSHA256:
		shapeOK = len(r.Data) == 32
	case MatchSHA512:
		shapeOK = len(r.Data) == 64
	case MatchFull:
		shapeOK = len(r.Data) > 0 // and DER, checked by structure below
	}
	if err == nil && !(daneUsage && knownSelector && shapeOK) {
		t.Fatalf("%v accepted", r)
	}
	if err != nil && daneUsage && knownSelector && shapeOK && r.MatchingType != MatchFull {
		t.Fatalf("%v refused: %v", r, err)
	}
	if !daneUsage || !knownSelector || r.MatchingType != MatchFull || errors.Is(err, ErrDigestLength) {
		return
	}
	var parsed error
	if r.Selector == SelectorCert {
		_, parsed = x509.ParseCertificate(r.Data)
	} else {
		_, parsed = x509.ParsePKIXPublicKey(r.Data)
	}
	if parsed == nil && err != nil {
		t.Fatalf("%v: crypto/x509 parses the data, but Usable says %v", r, err)
	}
}
