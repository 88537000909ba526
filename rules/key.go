package rules

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"unicode/utf8"
	"unsafe"

	"golang.org/x/net/idna"
)

// KeyKind says which form of Postfix next-hop a lookup key has. Postfix
// sends the next hop as it appears in the transport or the recipient
// domain, in the case it was written (docs/interface.md, "Keys").
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

// KeyBuf is room on a lookup's stack for a normalised key. Every valid
// domain name and next hop fits; a longer key still parses, into memory
// that append allocates.
type KeyBuf [320]byte

// ParseKey normalises a key as Postfix sends it. Case is folded, one
// trailing dot is ignored and Unicode names become A-labels, so that
// "Bücher.Example." and "xn--bcher-kva.example" are the same destination.
func ParseKey(raw string) (Key, error) {
	v, err := AppendKey(make([]byte, 0, len(raw)+8), []byte(raw))
	if err != nil {
		return Key{}, err
	}
	return v.Key(), nil
}

// KeyView is a parsed key held in a caller's buffer rather than in
// strings: what the table lookups work on, so that answering from the
// rules allocates nothing. Name is the normalised key's Name; the host is
// Name[hostOff:hostEnd].
type KeyView struct {
	Kind             KeyKind
	Name             []byte
	hostOff, hostEnd int
	port             int
	direct           bool
}

// Key copies the view into a Key (one allocation: Host shares Name's
// bytes).
func (v KeyView) Key() Key {
	name := string(v.Name)
	return Key{Kind: v.Kind, Name: name, Host: name[v.hostOff:v.hostEnd], Port: v.port, Direct: v.direct}
}

// Borrow is Key without the copy: the Key's strings share the view's
// bytes. It is for a lookup that only reads the key while the bytes stay
// as they are (the caller's buffer is not written again); whatever keeps
// a string of it beyond that must copy it (strings.Clone).
func (v KeyView) Borrow() Key {
	name := unsafe.String(unsafe.SliceData(v.Name), len(v.Name))
	return Key{Kind: v.Kind, Name: name, Host: name[v.hostOff:v.hostEnd], Port: v.port, Direct: v.direct}
}

// AppendKey is ParseKey without strings: it appends the normalised key to
// dst (empty, with the capacity the caller wants to use, such as a KeyBuf
// on its stack) and describes it. raw is not retained.
func AppendKey(dst, raw []byte) (KeyView, error) {
	if len(raw) == 0 || len(raw) > maxNameLen {
		return KeyView{}, fmt.Errorf("%w: empty or too long", ErrInvalidKey)
	}
	switch {
	case raw[0] == '[':
		return parseBracketed(dst, raw)
	case bytes.IndexByte(raw, ':') >= 0:
		i := bytes.LastIndexByte(raw, ':')
		port, err := parsePort(raw[i+1:])
		if err != nil {
			return KeyView{}, err
		}
		name, err := appendName(dst, raw[:i])
		if err != nil {
			return KeyView{}, err
		}
		host := len(name)
		name = strconv.AppendInt(append(name, ':'), int64(port), 10)
		return KeyView{Kind: KeyVerbatim, Name: name, hostEnd: host, port: port}, nil
	case raw[0] == '.':
		name, err := appendName(dst, raw[1:])
		if err != nil {
			return KeyView{}, err
		}
		return KeyView{Kind: KeyParent, Name: name}, nil
	}
	name, err := appendName(dst, raw)
	if err != nil {
		return KeyView{}, err
	}
	return KeyView{Kind: KeyDomain, Name: name, hostEnd: len(name)}, nil
}

// parseBracketed handles "[host]" and "[host]:port": Postfix's next hop
// that names one host and skips the MX lookup.
func parseBracketed(dst, raw []byte) (KeyView, error) {
	end := bytes.IndexByte(raw, ']')
	if end < 0 {
		return KeyView{}, fmt.Errorf("%w: %q has no closing bracket", ErrInvalidKey, raw)
	}
	inner, rest := raw[1:end], raw[end+1:]
	name, err := appendHost(append(dst, '['), inner)
	if err != nil {
		return KeyView{}, err
	}
	v := KeyView{Kind: KeyVerbatim, hostOff: 1, hostEnd: len(name), direct: true}
	name = append(name, ']')
	if len(rest) > 0 {
		if rest[0] != ':' {
			return KeyView{}, fmt.Errorf("%w: unexpected %q after ]", ErrInvalidKey, rest)
		}
		if v.port, err = parsePort(rest[1:]); err != nil {
			return KeyView{}, err
		}
		name = strconv.AppendInt(append(name, ':'), int64(v.port), 10)
	}
	v.Name = name
	return v, nil
}

// appendHost appends a domain name or an IP address literal (also
// Postfix's "ipv6:" prefixed form), as found inside brackets.
func appendHost(dst, s []byte) ([]byte, error) {
	if looksLikeIP(s) {
		lower := appendLower(dst, s)
		addr := bytes.TrimPrefix(lower[len(dst):], []byte("ipv6:"))
		if _, err := netip.ParseAddr(string(addr)); err == nil {
			return lower, nil
		}
	}
	return appendName(dst, s)
}

// looksLikeIP is a cheap test that spares host names a failed address
// parse.
func looksLikeIP(s []byte) bool {
	if bytes.IndexByte(s, ':') >= 0 {
		return true
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return true
}

// parsePort reads a port number: decimal digits (leading zeros allowed,
// as Postfix allows them) for a value from 1 to 65535.
func parsePort(s []byte) (int, error) {
	p := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			p = 0
			break
		}
		if p = p*10 + int(c-'0'); p > 65535 {
			p = 0
			break
		}
	}
	if p < 1 {
		return 0, fmt.Errorf("%w: port %q is not a number from 1 to 65535", ErrInvalidKey, s)
	}
	return p, nil
}

// appendName appends a domain name lower-cased, without one trailing dot
// and with Unicode labels converted to A-labels. ASCII names, the common
// case, are only lower-cased.
func appendName(dst, s []byte) ([]byte, error) {
	s = bytes.TrimSuffix(s, []byte("."))
	if len(s) == 0 {
		return nil, fmt.Errorf("%w: empty name", ErrInvalidKey)
	}
	// Copy and fold case in one pass. The loop has no data-dependent
	// branch (the letters' case varies from key to key, so branches on
	// it mispredict): each test is a 0 or 1 (see b2u).
	start := len(dst)
	dst = append(dst, s...)
	name := dst[start:]
	var high, control, emptyLabel uint32
	prevDot := uint32(1) // a leading dot makes an empty label
	for i, c := range name {
		name[i] = c | byte(b2u(c-'A' < 26)<<5) // 'A'..'Z' to 'a'..'z'
		high |= uint32(c >> 7)
		control |= b2u(c <= ' ') | b2u(c == 0x7f)
		dot := b2u(c == '.')
		emptyLabel |= dot & prevDot
		prevDot = dot
	}
	emptyLabel |= prevDot // a dot left at the end
	switch {
	case high != 0:
	case control != 0:
		return nil, fmt.Errorf("%w: %q contains a space or control character", ErrInvalidKey, s)
	case emptyLabel != 0:
		return nil, fmt.Errorf("%w: %q has an empty label", ErrInvalidKey, s)
	default:
		return dst, nil
	}
	a, err := idna.Lookup.ToASCII(string(s))
	if err != nil || !utf8.Valid(s) {
		if err == nil {
			err = errors.New("not UTF-8")
		}
		return nil, fmt.Errorf("%w: %q is not a valid internationalised name: %v", ErrInvalidKey, s, err)
	}
	// The A-label form must pass the ASCII checks too (idna lets an
	// empty label through).
	return appendName(dst[:start], []byte(a))
}

// b2u is 1 for true, 0 for false; the compiler makes it a flag move, not
// a branch.
func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// normalizeName is appendName for names in the configuration.
func normalizeName(s string) (string, error) {
	b, err := appendName(nil, []byte(s))
	return string(b), err
}

// appendLower appends s with ASCII upper case folded.
func appendLower(dst, s []byte) []byte {
	for _, c := range s {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}
