package dane

import (
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Certificate usages (RFC 6698 section 2.1.1, names from RFC 7218).
const (
	UsagePKIXTA uint8 = 0 // PKIX-TA: not for SMTP (RFC 7672 section 3.1.3)
	UsagePKIXEE uint8 = 1 // PKIX-EE: not for SMTP (RFC 7672 section 3.1.3)
	UsageDANETA uint8 = 2 // DANE-TA: trust anchor (RFC 7672 section 3.1.2)
	UsageDANEEE uint8 = 3 // DANE-EE: the server's own key (RFC 7672 section 3.1.1)
)

// Selectors (RFC 6698 section 2.1.2).
const (
	SelectorCert uint8 = 0 // the full certificate
	SelectorSPKI uint8 = 1 // the SubjectPublicKeyInfo
)

// Matching types (RFC 6698 section 2.1.3).
const (
	MatchFull   uint8 = 0 // the selected content itself
	MatchSHA256 uint8 = 1 // its SHA-256 digest, 32 bytes
	MatchSHA512 uint8 = 2 // its SHA-512 digest, 64 bytes
)

// Reasons a TLSA record is unusable for SMTP. Record.Usable wraps one of
// them; match with errors.Is.
var (
	// ErrPKIXUsage: usages PKIX-TA(0) and PKIX-EE(1) depend on a CA list
	// the SMTP client and server never agreed on, so RFC 7672 section 3.1.3
	// tells SMTP clients to treat them as unusable.
	ErrPKIXUsage = errors.New("PKIX usage not used by SMTP")
	// ErrUsage: a certificate usage no RFC defines.
	ErrUsage = errors.New("unknown certificate usage")
	// ErrSelector: a selector no RFC defines.
	ErrSelector = errors.New("unknown selector")
	// ErrMatchingType: a matching type no RFC defines.
	ErrMatchingType = errors.New("unknown matching type")
	// ErrDigestLength: a SHA-256 or SHA-512 association whose length is not
	// that of the digest; it can match no certificate.
	ErrDigestLength = errors.New("digest length does not match the matching type")
	// ErrMalformed: association data that is empty, not hexadecimal, or, for
	// matching type Full, not a DER certificate or SubjectPublicKeyInfo.
	ErrMalformed = errors.New("malformed certificate association data")
)

// Record is one TLSA record (RFC 6698 section 2.1): how a server's
// certificate is to be matched.
type Record struct {
	Usage        uint8
	Selector     uint8
	MatchingType uint8
	Data         []byte // the certificate association data
}

// String returns the record's data in presentation format, as Postfix logs
// it: "3 1 1 0123...ef".
func (r Record) String() string {
	return fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.MatchingType, hex.EncodeToString(r.Data))
}

// recordFromRR converts a TLSA resource record; the association data that
// github.com/miekg/dns keeps in hexadecimal is decoded, and data that does
// not decode is kept empty, which makes the record unusable.
func recordFromRR(rr *dns.TLSA) Record {
	data, err := hex.DecodeString(rr.Certificate)
	if err != nil {
		data = nil
	}
	return Record{Usage: rr.Usage, Selector: rr.Selector, MatchingType: rr.MatchingType, Data: data}
}

// Usable reports whether an SMTP client can authenticate a server with the
// record: nil if it can, else an error wrapping one of ErrPKIXUsage,
// ErrUsage, ErrSelector, ErrMatchingType, ErrDigestLength or ErrMalformed.
//
// A record is usable (RFC 7672 sections 2.2 and 3.1) when its usage is
// DANE-TA(2) or DANE-EE(3), its selector Cert(0) or SPKI(1), and its
// matching type Full(0), SHA2-256(1) or SHA2-512(2) with data of the right
// shape: a digest of exactly 32 or 64 bytes (a record of another length can
// match nothing, RFC 6698 section 2.1.3), or for Full a DER-encoded
// certificate or SubjectPublicKeyInfo (checked for structure only, not for
// algorithms, as OpenSSL's DANE code that Postfix uses parses it). Only the
// record's form is checked here: whether it matches the server's
// certificate is for the SMTP client to find out when it connects.
func (r Record) Usable() error {
	switch r.Usage {
	case UsageDANETA, UsageDANEEE:
	case UsagePKIXTA, UsagePKIXEE:
		return fmt.Errorf("%w (RFC 7672 section 3.1.3): usage %d", ErrPKIXUsage, r.Usage)
	default:
		return fmt.Errorf("%w %d", ErrUsage, r.Usage)
	}
	if r.Selector != SelectorCert && r.Selector != SelectorSPKI {
		return fmt.Errorf("%w %d", ErrSelector, r.Selector)
	}
	switch r.MatchingType {
	case MatchFull:
		if len(r.Data) == 0 {
			return fmt.Errorf("%w: empty", ErrMalformed)
		}
		if err := checkDER(r.Selector, r.Data); err != nil {
			return fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	case MatchSHA256:
		if len(r.Data) != 32 {
			return fmt.Errorf("%w: SHA2-256 wants 32 bytes, got %d", ErrDigestLength, len(r.Data))
		}
	case MatchSHA512:
		if len(r.Data) != 64 {
			return fmt.Errorf("%w: SHA2-512 wants 64 bytes, got %d", ErrDigestLength, len(r.Data))
		}
	default:
		return fmt.Errorf("%w %d", ErrMatchingType, r.MatchingType)
	}
	return nil
}

// checkDER checks the outer structure of a full association: a Certificate
// (RFC 5280 section 4.1) for selector Cert, a SubjectPublicKeyInfo for
// selector SPKI, with nothing after it.
func checkDER(selector uint8, data []byte) error {
	var rest []byte
	var err error
	if selector == SelectorCert {
		var cert struct {
			TBS       asn1.RawValue
			Algorithm asn1.RawValue
			Signature asn1.BitString
		}
		rest, err = asn1.Unmarshal(data, &cert)
		if err == nil && (!isSequence(cert.TBS) || !isSequence(cert.Algorithm)) {
			err = errors.New("not a certificate")
		}
	} else {
		var spki struct {
			Algorithm asn1.RawValue
			Key       asn1.BitString
		}
		rest, err = asn1.Unmarshal(data, &spki)
		if err == nil && !isSequence(spki.Algorithm) {
			err = errors.New("not a SubjectPublicKeyInfo")
		}
	}
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("%d bytes after the DER value", len(rest))
	}
	return nil
}

func isSequence(v asn1.RawValue) bool {
	return v.Class == asn1.ClassUniversal && v.Tag == asn1.TagSequence && v.IsCompound
}

// presentation returns records in presentation format, and how many of them
// are usable with the first reason one was not.
func presentation(recs []Record) (out []string, usable int, firstErr error) {
	out = make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.String())
		if err := r.Usable(); err == nil {
			usable++
		} else if firstErr == nil {
			firstErr = err
		}
	}
	return out, usable, firstErr
}

// describeUsable says how many of n records are usable, for Detail.
func describeUsable(usable, n int, firstErr error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d TLSA records usable", usable, n)
	if firstErr != nil {
		fmt.Fprintf(&b, " (unusable: %v)", firstErr)
	}
	return b.String()
}
