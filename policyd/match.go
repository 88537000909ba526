package policyd

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/idna"

	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// KeyKind says which form of Postfix next-hop a lookup key has. Postfix
// sends the next hop as it appears in the transport or the recipient
// domain (PROTOCOLS.md, "Keys Postfix sends").
type KeyKind uint8

const (
	// KeyDomain is a domain name: a recipient domain or a transport's
	// bare host next hop. Matched by exact and ".parent" rules.
	KeyDomain KeyKind = iota + 1
	// KeyParent is ".example.org", which Postfix asks after a NOTFOUND for
	// a name below it. Only ".parent" rules answer it.
	KeyParent
	// KeyVerbatim is a next hop with brackets or a port: "[host]",
	// "[host]:port", "host:port". Matched only by a rule written the same
	// way, as Postfix's own tables do.
	KeyVerbatim
)

func (k KeyKind) String() string {
	switch k {
	case KeyDomain:
		return "domain"
	case KeyParent:
		return "parent domain"
	case KeyVerbatim:
		return "verbatim next hop"
	}
	return "invalid"
}

// Key is a normalised lookup key: lower case, no trailing dot, A-labels.
// Name is the form rules are indexed by: the domain for KeyDomain, the
// domain without its leading dot for KeyParent, the whole normalised next
// hop for KeyVerbatim. Host is the host to probe, Port its port if given;
// Direct is set for "[host]" forms, where Postfix skips the MX lookup.
type Key struct {
	Kind   KeyKind
	Name   string
	Host   string
	Port   int
	Direct bool
}

// Target is what to probe for this key: a domain's MX hosts, or the
// bracketed host itself. A .parent key names no single destination.
func (k Key) Target() (tlsprobe.Target, bool) {
	if k.Kind == KeyParent || k.Kind == 0 {
		return tlsprobe.Target{}, false
	}
	return tlsprobe.Target{Name: strings.TrimPrefix(k.Host, "ipv6:"), Direct: k.Direct, Port: k.Port}, true
}

// String renders the key in Postfix's form.
func (k Key) String() string {
	if k.Kind == KeyParent {
		return "." + k.Name
	}
	return k.Name
}

// ErrInvalidKey is returned for keys that are no Postfix next hop.
var ErrInvalidKey = errors.New("invalid destination")

// maxNameLen bounds a domain name (RFC 1035: 253 characters in text form),
// with room for Unicode forms before conversion.
const maxNameLen = 1024

// ParseKey normalises a key as Postfix sends it. Case is folded, one
// trailing dot is ignored and Unicode names become A-labels, so that
// "Bücher.Example." and "xn--bcher-kva.example" are the same destination.
func ParseKey(raw string) (Key, error) {
	if raw == "" || len(raw) > maxNameLen {
		return Key{}, fmt.Errorf("%w: empty or too long", ErrInvalidKey)
	}
	switch {
	case raw[0] == '[':
		return parseBracketed(raw)
	case strings.IndexByte(raw, ':') >= 0:
		host, port, err := splitPort(raw)
		if err != nil {
			return Key{}, err
		}
		h, err := normalizeName(host)
		if err != nil {
			return Key{}, err
		}
		name := raw // already canonical: the common case, no allocation
		if h != host || raw[len(host)+1] == '0' {
			name = h + ":" + strconv.Itoa(port)
		}
		return Key{Kind: KeyVerbatim, Name: name, Host: h, Port: port}, nil
	case raw[0] == '.':
		name, err := normalizeName(raw[1:])
		if err != nil {
			return Key{}, err
		}
		return Key{Kind: KeyParent, Name: name}, nil
	}
	name, err := normalizeName(raw)
	if err != nil {
		return Key{}, err
	}
	return Key{Kind: KeyDomain, Name: name, Host: name}, nil
}

// parseBracketed handles "[host]" and "[host]:port": Postfix's next hop
// that names one host and skips the MX lookup.
func parseBracketed(raw string) (Key, error) {
	end := strings.IndexByte(raw, ']')
	if end < 0 {
		return Key{}, fmt.Errorf("%w: %q has no closing bracket", ErrInvalidKey, raw)
	}
	inner, rest := raw[1:end], raw[end+1:]
	host, err := normalizeHost(inner)
	if err != nil {
		return Key{}, err
	}
	if rest == "" {
		name := raw
		if host != inner {
			name = "[" + host + "]"
		}
		return Key{Kind: KeyVerbatim, Name: name, Host: host, Direct: true}, nil
	}
	if rest[0] != ':' {
		return Key{}, fmt.Errorf("%w: unexpected %q after ]", ErrInvalidKey, rest)
	}
	port, err := parsePort(rest[1:])
	if err != nil {
		return Key{}, err
	}
	name := raw // already canonical: the common case, no allocation
	if host != inner || rest[1] == '0' {
		name = "[" + host + "]:" + strconv.Itoa(port)
	}
	return Key{Kind: KeyVerbatim, Name: name, Host: host, Port: port, Direct: true}, nil
}

// normalizeHost accepts a domain name or an IP address literal (also
// Postfix's "ipv6:" prefixed form) inside brackets.
func normalizeHost(s string) (string, error) {
	if looksLikeIP(s) {
		lower := strings.ToLower(s)
		if _, err := netip.ParseAddr(strings.TrimPrefix(lower, "ipv6:")); err == nil {
			return lower, nil
		}
	}
	return normalizeName(s)
}

// looksLikeIP is a cheap test that spares host names the allocation of a
// failed address parse.
func looksLikeIP(s string) bool {
	if strings.IndexByte(s, ':') >= 0 {
		return true
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return true
}

func splitPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	port, err := parsePort(s[i+1:])
	if err != nil {
		return "", 0, err
	}
	return s[:i], port, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 || s[0] == '+' {
		return 0, fmt.Errorf("%w: port %q is not a number from 1 to 65535", ErrInvalidKey, s)
	}
	return p, nil
}

// normalizeName lower-cases a domain name, drops one trailing dot and
// converts Unicode labels to A-labels. ASCII names, the common case, are
// only lower-cased, which does not allocate when they already are.
func normalizeName(s string) (string, error) {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "", fmt.Errorf("%w: empty name", ErrInvalidKey)
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 {
			ascii = false
			break
		}
		if c <= ' ' || c == 0x7f {
			return "", fmt.Errorf("%w: %q contains a space or control character", ErrInvalidKey, s)
		}
	}
	if ascii {
		if strings.HasPrefix(s, ".") || strings.Contains(s, "..") {
			return "", fmt.Errorf("%w: %q has an empty label", ErrInvalidKey, s)
		}
		return strings.ToLower(s), nil
	}
	a, err := idna.Lookup.ToASCII(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not a valid internationalised name: %v", ErrInvalidKey, s, err)
	}
	return a, nil
}

// forEachParent calls f with each proper parent of name, nearest first:
// "a.b.example" gives "b.example", then "example".
func forEachParent(name string, f func(parent string)) {
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			f(name[i+1:])
		}
	}
}
