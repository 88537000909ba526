package rules

import (
	"crypto/tls"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is a Postfix release, major.minor, compared to decide which
// policy attributes it can parse.
type Version struct{ Major, Minor int }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

var versionRE = regexp.MustCompile(`^(\d{1,2})\.(\d{1,2})(?:\.\d{1,3})?$`)

func parseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("postfix_version %q is not a version like \"3.7\" (see postconf mail_version)", s)
	}
	maj, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	v := Version{maj, minor}
	if !v.AtLeast(2, 11) {
		return v, fmt.Errorf("postfix_version %s is too old: socketmap policy tables need Postfix 2.11 or later", v)
	}
	return v, nil
}

// tlsVersions are the TLS versions by Postfix's names, oldest first.
var tlsVersions = []struct {
	name    string
	version uint16
}{
	{"TLSv1", tls.VersionTLS10},
	{"TLSv1.1", tls.VersionTLS11},
	{"TLSv1.2", tls.VersionTLS12},
	{"TLSv1.3", tls.VersionTLS13},
}

// tlsVersion returns the crypto/tls number of a TLS version by Postfix's
// name, or 0.
func tlsVersion(name string) uint16 {
	for _, v := range tlsVersions {
		if v.name == name {
			return v.version
		}
	}
	return 0
}

func tlsVersionNames() string {
	names := make([]string, len(tlsVersions))
	for i, v := range tlsVersions {
		names[i] = v.name
	}
	return strings.Join(names, ", ")
}

// RenderPolicy writes level l as a Postfix TLS policy. Levels that require
// TLS carry the protocol floor; Postfix before 3.6 cannot parse ">=", so it
// gets the equivalent exclusion list.
func RenderPolicy(l Level, minTLS string, v Version) string {
	if !l.Encrypted() && l != LevelDane {
		return l.String()
	}
	if v.AtLeast(3, 6) {
		return l.String() + " protocols=>=" + minTLS
	}
	excluded := []string{"!SSLv2", "!SSLv3"}
	for _, t := range tlsVersions {
		if t.name == minTLS {
			break
		}
		excluded = append(excluded, "!"+t.name)
	}
	return l.String() + " protocols=" + strings.Join(excluded, ":")
}
