package dane

import (
	"fmt"
	"time"
)

// Verdict is what a destination's DNSSEC-validated records allow: the
// policy source's answer, which the daemon combines with its rules. The
// zero value, NoDANE, raises nothing.
type Verdict uint8

const (
	// NoDANE: DANE does not apply to the destination: its MX records or
	// every host's address or TLSA records are not DNSSEC-validated
	// (RFC 7672 sections 2.2.1 to 2.2.3), it publishes no TLSA records
	// (validated denial), or the resolver is not trusted. The daemon keeps
	// its other sources and its floor.
	NoDANE Verdict = iota
	// DANEOnly: every MX host has a usable, validated TLSA RRset (RFC 7672
	// section 2.2): Postfix "dane-only".
	DANEOnly
	// MixedDANE: some MX hosts have usable TLSA records, others do not
	// (validated denial, insecure, no address), or hosts past MaxHosts went
	// unchecked. Postfix "dane" does DANE per host, as RFC 7672 section 2.2
	// describes: authenticated where TLSA records are usable, mandatory TLS
	// where they are unusable, opportunistic TLS elsewhere.
	MixedDANE
	// EncryptOnly: TLSA records are published (and validated) but none is
	// usable on any host, so no host can be authenticated; RFC 7672 section
	// 2.2 still has the client insist on TLS, unauthenticated ("DANE
	// broken"), never plaintext: Postfix "encrypt".
	EncryptOnly
	// TempFail: a lookup failed (SERVFAIL, which is also how a validating
	// resolver reports a bogus answer, or a timeout). RFC 7672 section
	// 2.1.1: that is not "no DANE"; the client defers. The daemon answers a
	// temporary error or its floor, and never a weaker level because of it.
	TempFail
)

var verdictNames = [...]string{
	NoDANE:      "no_dane",
	DANEOnly:    "dane_only",
	MixedDANE:   "mixed",
	EncryptOnly: "encrypt_only",
	TempFail:    "temp_fail",
}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// HostStatus is what the lookups found for one MX host. The zero value,
// Failure, claims nothing.
type HostStatus uint8

const (
	// Failure: an address or TLSA lookup failed (SERVFAIL or timeout);
	// RFC 7672 section 2.1.1 defers delivery rather than drop DANE.
	Failure HostStatus = iota
	// Insecure: the host's address records or its TLSA answer are not
	// DNSSEC-validated (no AD bit), so DANE does not apply to it (RFC 7672
	// sections 2.2.2 and 2.2.3); also an IP-address host, which has no
	// name to hold TLSA records.
	Insecure
	// NoAddress: the host has no A or AAAA records; no client can connect
	// to it, so it does not count in the domain's verdict.
	NoAddress
	// NoTLSA: a validated denial: the TLSA name does not exist, or has no
	// TLSA records, and the answer has the AD bit.
	NoTLSA
	// Unusable: a validated TLSA RRset in which no record is usable
	// (Record.Usable): TLS is still mandatory, unauthenticated (RFC 7672
	// section 2.2).
	Unusable
	// Usable: a validated TLSA RRset with at least one usable record: the
	// host must be authenticated with it (RFC 7672 sections 2.2 and 3).
	Usable
)

var statusNames = [...]string{
	Failure:   "failure",
	Insecure:  "insecure",
	NoAddress: "no_address",
	NoTLSA:    "no_tlsa",
	Unusable:  "unusable",
	Usable:    "usable",
}

func (s HostStatus) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("HostStatus(%d)", uint8(s))
}

// Verdict is the verdict for a next hop that is this one host, such as
// Postfix's "[mx.example.com]" (RFC 7672 section 2.2.2, no MX lookup):
// Usable gives DANEOnly, Unusable EncryptOnly, Failure TempFail, anything
// else NoDANE.
func (s HostStatus) Verdict() Verdict {
	switch s {
	case Usable:
		return DANEOnly
	case Unusable:
		return EncryptOnly
	case Failure:
		return TempFail
	}
	return NoDANE
}

// HostTLSA is what was found for one MX host.
type HostTLSA struct {
	// Host is the MX host name, lower case, without the trailing dot.
	Host string
	// Base is the TLSA base domain whose records were used: Host, or the
	// name Host's CNAME chain leads to (RFC 7672 section 2.2.3). Empty
	// unless Status is Usable or Unusable.
	Base   string
	Status HostStatus
	// Records are the validated TLSA records in presentation form ("3 1 1
	// 0a1b..."), usable or not; empty unless Status is Usable or Unusable.
	Records []string
	// Detail says what was found, for logs and "tlspolicyd probe".
	Detail string
	// Err is the failed lookup, a *dnsclient.Error, when Status is Failure.
	Err error
	// TTL is how long what was found may be kept: the smallest TTL of the
	// answers it rests on (dnsclient.Resolution.TTL); 0 if unknown.
	TTL time.Duration
}

// DomainTLSA is the outcome of checking one destination domain.
type DomainTLSA struct {
	// Domain is the domain checked, lower case A-labels, no trailing dot.
	Domain  string
	Verdict Verdict
	// MXSecure reports that the MX RRset (or its validated absence) had
	// the AD bit.
	MXSecure bool
	// Insecure reports, for NoDANE, that DANE does not apply because
	// something was not DNSSEC-validated (or the resolver is not trusted),
	// rather than because the domain publishes no TLSA records.
	Insecure bool
	// Hosts are the MX hosts checked, by preference (at most MaxHosts);
	// for a domain without MX records, the domain itself (implicit MX).
	Hosts []HostTLSA
	// Detail says why, citing the rule applied.
	Detail string
	// Err is the failed lookup behind TempFail, or ErrUntrusted; else nil.
	Err error
	// CheckedAt is when the check ended, by Checker.Now.
	CheckedAt time.Time
	// TTL is how long the verdict may be kept: the smallest TTL of the
	// answers it rests on, the MX RRset's and each host's (HostTLSA.TTL),
	// so that a withdrawn or changed TLSA RRset is seen when it expires;
	// 0 if unknown (a failure, or DANE not checked).
	TTL time.Duration
}

// decide turns the hosts' findings into the domain's verdict (see Check).
// unchecked counts MX hosts past MaxHosts.
func decide(hosts []HostTLSA, unchecked int) (v Verdict, insecure bool, detail string, err error) {
	var usable, unusable, notlsa, insec, noaddr int
	for _, h := range hosts {
		switch h.Status {
		case Failure:
			// RFC 7672 section 2.1.1: an indeterminate or bogus answer is
			// a reason to defer, never to treat the host as without DANE.
			return TempFail, false, fmt.Sprintf("%s: %s (RFC 7672 section 2.1.1: defer, do not drop DANE)", h.Host, h.Detail), h.Err
		case Usable:
			usable++
		case Unusable:
			unusable++
		case NoTLSA:
			notlsa++
		case Insecure:
			insec++
		case NoAddress:
			noaddr++
		}
	}
	checked := len(hosts) - noaddr
	beyond := ""
	if unchecked > 0 {
		beyond = fmt.Sprintf("; %d MX hosts past the first %d not checked", unchecked, MaxHosts)
	}
	switch {
	case checked == 0:
		return NoDANE, false, "no MX host has an address" + beyond, nil
	case usable == checked && unchecked == 0:
		return DANEOnly, false, fmt.Sprintf("all %d MX hosts have usable TLSA records (RFC 7672 section 2.2)", usable), nil
	case usable > 0:
		return MixedDANE, false, fmt.Sprintf("%d of %d MX hosts have usable TLSA records: DANE applies per host (RFC 7672 section 2.2)%s", usable, checked, beyond), nil
	case unusable > 0:
		return EncryptOnly, false, fmt.Sprintf("%d of %d MX hosts publish TLSA records but none is usable: TLS is mandatory, unauthenticated (RFC 7672 section 2.2)%s", unusable, checked, beyond), nil
	case insec > 0:
		return NoDANE, true, fmt.Sprintf("%d of %d MX hosts not DNSSEC-validated, the others publish no TLSA records: DANE does not apply (RFC 7672 sections 2.2.2, 2.2.3)%s", insec, checked, beyond), nil
	default:
		return NoDANE, false, fmt.Sprintf("no MX host publishes TLSA records (validated denial)%s", beyond), nil
	}
}
