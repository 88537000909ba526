package mtasts

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/idna"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
)

// Errors. Parsing and discovery errors wrap one of these; a failed fetch is
// a *FetchError, which wraps the sentinel of its FetchResult and the cause.
var (
	ErrInvalidDomain   = errors.New("mtasts: not a domain name")
	ErrInvalidRecord   = errors.New("mtasts: invalid MTA-STS TXT record")
	ErrMultipleRecords = errors.New("mtasts: more than one MTA-STS TXT record")
	ErrInvalidPolicy   = errors.New("mtasts: invalid policy")
	ErrTooLarge        = errors.New("mtasts: policy too large")

	ErrDNS            = errors.New("mtasts: DNS lookup failed")
	ErrPrivateAddress = errors.New("mtasts: policy host has no public address")
	ErrConnect        = errors.New("mtasts: cannot connect to the policy host")
	ErrTLS            = errors.New("mtasts: TLS with the policy host failed")
	ErrTimeout        = errors.New("mtasts: timeout")
	ErrRedirect       = errors.New("mtasts: policy host redirects")
	ErrHTTP           = errors.New("mtasts: HTTP failure")
	// ErrContentType is an ErrHTTP: the policy was not served as text/plain.
	ErrContentType = errors.New("mtasts: policy media type is not text/plain")
)

// FetchResult classifies how a policy fetch ended, for the
// tlspolicyd_mtasts_fetches_total{result} metric and for logs.
type FetchResult uint8

// Fetch results; String gives the metric label.
const (
	FetchOK             FetchResult = iota // ok
	FetchDNSError                          // dns_error: mta-sts.<domain> did not resolve
	FetchPrivateAddress                    // private_address: it resolved only to refused addresses
	FetchConnectError                      // connect_error: no TCP connection
	FetchTLSError                          // tls_error: handshake or certificate (chain, name, expiry) failed
	FetchTimeout                           // timeout: Fetcher.Timeout or the caller's context ran out
	FetchRedirect                          // redirect: a 3xx answer, which RFC 8461 section 3.3 forbids following
	FetchHTTPError                         // http_error: any status but 200, a media type but text/plain, a broken answer
	FetchTooLarge                          // too_large: a body over MaxPolicySize
	FetchInvalid                           // invalid: the body is not a valid policy
)

var fetchResultNames = [...]string{
	FetchOK:             "ok",
	FetchDNSError:       "dns_error",
	FetchPrivateAddress: "private_address",
	FetchConnectError:   "connect_error",
	FetchTLSError:       "tls_error",
	FetchTimeout:        "timeout",
	FetchRedirect:       "redirect",
	FetchHTTPError:      "http_error",
	FetchTooLarge:       "too_large",
	FetchInvalid:        "invalid",
}

var fetchResultErrs = [...]error{
	FetchDNSError:       ErrDNS,
	FetchPrivateAddress: ErrPrivateAddress,
	FetchConnectError:   ErrConnect,
	FetchTLSError:       ErrTLS,
	FetchTimeout:        ErrTimeout,
	FetchRedirect:       ErrRedirect,
	FetchHTTPError:      ErrHTTP,
	FetchTooLarge:       ErrTooLarge,
	FetchInvalid:        ErrInvalidPolicy,
}

func (r FetchResult) String() string {
	if int(r) < len(fetchResultNames) {
		return fetchResultNames[r]
	}
	return "FetchResult(" + strconv.Itoa(int(r)) + ")"
}

// FetchResults lists every result, for metric labels.
func FetchResults() []FetchResult {
	rs := make([]FetchResult, len(fetchResultNames))
	for i := range rs {
		rs[i] = FetchResult(i)
	}
	return rs
}

// FetchResultOf returns the result an error from Fetch stands for: FetchOK
// for nil, the error's own result for a *FetchError, else FetchHTTPError.
func FetchResultOf(err error) FetchResult {
	var fe *FetchError
	switch {
	case err == nil:
		return FetchOK
	case errors.As(err, &fe):
		return fe.Result
	default:
		return FetchHTTPError
	}
}

// FetchError is a failed policy fetch. It matches (errors.Is) the sentinel
// of its Result, such as ErrTLS, and its cause, such as an
// x509.HostnameError.
type FetchError struct {
	Domain string
	Result FetchResult
	Err    error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("mtasts: fetching the policy of %s: %s: %v", e.Domain, e.Result, e.Err)
}

func (e *FetchError) Unwrap() []error {
	var errs []error
	if int(e.Result) < len(fetchResultErrs) && fetchResultErrs[e.Result] != nil {
		errs = append(errs, fetchResultErrs[e.Result])
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Resolver is the DNS a Fetcher uses; *dnsclient.Client implements it
// against the configured servers. A name that does not exist must be
// reported with an error wrapping dnsclient.ErrNXDomain: that is "no
// policy", while other errors are DNS failures.
type Resolver interface {
	// LookupTXT returns the TXT records at name, each one's strings
	// joined, and how long the answer may be kept (its DNS TTL, also for
	// a name that does not exist; 0 if unknown).
	LookupTXT(ctx context.Context, name string) ([]string, time.Duration, error)
	// LookupAddrs returns the host's IPv4 and IPv6 addresses.
	LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error)
}

// DefaultTimeout bounds a discovery or a fetch when Fetcher.Timeout is
// zero. RFC 8461 section 3.3 asks senders to bound the fetch; a policy host
// that needs longer than this is broken, and the cache keeps the last
// policy meanwhile.
const DefaultTimeout = 20 * time.Second

// maxHeaderBytes bounds the response header of a policy fetch.
const maxHeaderBytes = 16 << 10

// Fetcher discovers and fetches policies. Its zero value is not usable: set
// Resolver. Fields must not change once it is in use.
type Fetcher struct {
	// Resolver answers the TXT and address lookups. The policy host is
	// resolved through it too, never through the system resolver, so that
	// the configured DNS servers are the only ones asked.
	Resolver Resolver
	// Roots verify the policy host's certificate: the system roots plus
	// mtasts.ca_file (see roots.Load). Nil means the system roots.
	Roots *x509.CertPool
	// AllowPrivate permits connecting to loopback, private, link-local and
	// other non-public addresses (probe.allow_private). Without it they
	// are refused before any connection, as dnsclient.IsPublic decides.
	AllowPrivate bool
	// Dial opens TCP connections; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds Discover and, separately, the whole of Fetch (address
	// lookup, connection, TLS, request and body); 0 means DefaultTimeout.
	Timeout time.Duration
	// Now is the clock that stamps Policy.FetchedAt; nil means time.Now.
	Now func() time.Time
	// Port is the HTTPS port; 0 means 443. Tests set their server's port.
	Port int
}

func (f *Fetcher) timeout() time.Duration { return cmp.Or(f.Timeout, DefaultTimeout) }

func (f *Fetcher) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *Fetcher) port() uint16 {
	if f.Port > 0 && f.Port <= 0xffff {
		return uint16(f.Port)
	}
	return 443
}

// Record is what Discover found at "_mta-sts.<domain>".
type Record struct {
	// ID is the policy id the record publishes; empty when not Found.
	ID string
	// Found reports that there is one valid MTA-STS record.
	Found bool
	// TTL is how long the answer may be kept, as DNS says: when a changed
	// id could next be seen (RFC 8461 section 3.3 has senders check the
	// record for a new id); 0 if unknown.
	TTL time.Duration
}

// Discover looks up the TXT record at "_mta-sts.<domain>" and returns the
// policy id it publishes (RFC 8461 section 3.1). Records that do not begin
// with "v=STSv1;" are not MTA-STS records and are ignored.
//
//   - No record, or a domain that does not exist: Found is false, err nil.
//   - More than one MTA-STS record: ErrMultipleRecords; an invalid one:
//     ErrInvalidRecord. Section 3.1 has senders then assume that no policy
//     is available; the Cache keeps applying a cached one.
//   - A DNS failure (SERVFAIL, timeout): an error wrapping ErrDNS and the
//     Resolver's error, which must not be mistaken for "no policy".
//
// The Record's TTL is set whenever DNS answered, errors about the record
// included.
func (f *Fetcher) Discover(ctx context.Context, domain string) (Record, error) {
	d, err := normalizeDomain(domain)
	if err != nil {
		return Record{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout())
	defer cancel()
	txts, ttl, err := f.Resolver.LookupTXT(ctx, "_mta-sts."+d)
	r := Record{TTL: ttl}
	if err != nil {
		if errors.Is(err, dnsclient.ErrNXDomain) {
			return r, nil
		}
		return Record{}, fmt.Errorf("%w: %w", ErrDNS, err)
	}
	var sts []string
	for _, txt := range txts {
		if isSTSRecord(txt) {
			sts = append(sts, txt)
		}
	}
	switch len(sts) {
	case 0:
		return r, nil
	case 1:
	default:
		return r, fmt.Errorf("%w: %d at _mta-sts.%s", ErrMultipleRecords, len(sts), d)
	}
	if r.ID, err = ParseTXT(sts[0]); err != nil {
		return r, err
	}
	r.Found = true
	return r, nil
}

// Fetch fetches and parses the policy at
// https://mta-sts.<domain>/.well-known/mta-sts.txt, as RFC 8461 section 3.3
// requires:
//
//   - the host is resolved through the Resolver, and addresses that are not
//     public are skipped unless AllowPrivate (none left: FetchPrivateAddress,
//     and no connection is made);
//   - the certificate must verify against Roots for the name
//     "mta-sts.<domain>" (FetchTLSError);
//   - redirects are not followed (FetchRedirect), any status but 200 fails,
//     and the media type must be text/plain, parameters aside
//     (FetchHTTPError);
//   - the body may not exceed MaxPolicySize (FetchTooLarge) and must parse
//     (FetchInvalid); everything must finish within Timeout (FetchTimeout).
//
// No proxy from the environment is used, nor any HTTP cache (section 3.3
// forbids one). Errors are *FetchError. The policy's ID is left empty.
func (f *Fetcher) Fetch(ctx context.Context, domain string) (Policy, error) {
	d, err := normalizeDomain(domain)
	if err != nil {
		return Policy{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout())
	defer cancel()
	fail := func(r FetchResult, err error) (Policy, error) {
		return Policy{}, &FetchError{Domain: d, Result: r, Err: err}
	}
	host := "mta-sts." + d

	addrs, err := f.Resolver.LookupAddrs(ctx, host)
	if err != nil {
		return fail(FetchDNSError, err)
	}
	var usable []netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); f.AllowPrivate || dnsclient.IsPublic(a) {
			usable = append(usable, a)
		}
	}
	switch {
	case len(addrs) == 0:
		return fail(FetchDNSError, fmt.Errorf("%s has no address", host))
	case len(usable) == 0:
		return fail(FetchPrivateAddress, fmt.Errorf("%s resolves only to non-public addresses %v (set probe.allow_private: true to fetch from such addresses)", host, addrs))
	}

	tr := &http.Transport{
		Proxy: nil, // never an environment proxy: the daemon talks to the policy host itself
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return f.dialTLS(ctx, host, usable)
		},
		DisableKeepAlives:      true, // one request per fetch; nothing to keep
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxHeaderBytes,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		// Hand the 3xx back instead of following it, so it can be
		// refused and counted as a redirect.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/mta-sts.txt", nil)
	if err != nil {
		return fail(FetchHTTPError, err)
	}
	req.Header.Set("User-Agent", "tlspolicyd")
	resp, err := client.Do(req)
	if err != nil {
		return fail(classify(ctx, err), err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return fail(FetchRedirect, fmt.Errorf("HTTP %s to %q", resp.Status, clip(resp.Header.Get("Location"))))
	case resp.StatusCode != http.StatusOK:
		return fail(FetchHTTPError, fmt.Errorf("HTTP %s", resp.Status))
	}
	ct := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
		return fail(FetchHTTPError, fmt.Errorf("%w: %q", ErrContentType, clip(ct)))
	}
	if resp.ContentLength > MaxPolicySize {
		return fail(FetchTooLarge, fmt.Errorf("Content-Length %d, limit %d", resp.ContentLength, MaxPolicySize))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return fail(classify(ctx, err), err)
	}
	if len(body) > MaxPolicySize {
		return fail(FetchTooLarge, fmt.Errorf("body over %d bytes", MaxPolicySize))
	}
	p, err := ParsePolicy(body)
	if err != nil {
		return fail(FetchInvalid, err)
	}
	p.FetchedAt = f.now()
	return p, nil
}

// stepError marks where a connection attempt failed, so that the error
// that comes back through net/http can be classified.
type stepError struct {
	result FetchResult
	err    error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// dialTLS connects to the policy host's addresses in turn and completes a
// verified TLS handshake with the first that allows one. When every address
// fails, a TLS failure is reported over a connection failure: it says more.
func (f *Fetcher) dialTLS(ctx context.Context, host string, addrs []netip.Addr) (net.Conn, error) {
	dial := f.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	var first, tlsErr error
	for _, a := range addrs {
		addr := netip.AddrPortFrom(a, f.port()).String()
		raw, err := dial(ctx, "tcp", addr)
		if err != nil {
			first = cmp.Or[error](first, &stepError{FetchConnectError, err})
		} else {
			conn := tls.Client(raw, &tls.Config{
				ServerName: host,
				RootCAs:    f.Roots,
				NextProtos: []string{"http/1.1"},
			})
			if err = conn.HandshakeContext(ctx); err == nil {
				return conn, nil
			}
			raw.Close()
			tlsErr = cmp.Or[error](tlsErr, &stepError{FetchTLSError, fmt.Errorf("%s: %w", addr, err)})
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, cmp.Or[error](tlsErr, first)
}

// classify turns an error from the HTTP exchange into a result. Running
// out of time wins over the step that was interrupted.
func classify(ctx context.Context, err error) FetchResult {
	var ne net.Error
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout() {
		return FetchTimeout
	}
	var se *stepError
	if errors.As(err, &se) {
		return se.result
	}
	return FetchHTTPError
}

// normalizeDomain returns domain in lower-case ASCII without a trailing
// dot, or ErrInvalidDomain: the "_mta-sts." and "mta-sts." names built from
// it must be host names.
func normalizeDomain(domain string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", fmt.Errorf("%w: %q: %v", ErrInvalidDomain, clip(domain), err)
			}
			d = a
			break
		}
	}
	if !validHostname(d) || len("_mta-sts.")+len(d) > 253 {
		return "", fmt.Errorf("%w: %q", ErrInvalidDomain, clip(domain))
	}
	return d, nil
}
