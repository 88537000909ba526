package rules

import (
	"fmt"
	"strings"
)

// NullSender is how a class names the empty envelope sender (<>) of
// bounces and delivery reports, which no address pattern can match.
const NullSender = "<>"

// senderIndex finds a sender's class. The most specific pattern wins: a
// full address, then "@domain", then the nearest "@.parent".
type senderIndex struct {
	addrs   map[string]*Class // "local@example.org"
	domains map[string]*Class // "example.org" for "@example.org"
	parents map[string]*Class // "example.org" for "@.example.org"
	null    *Class
}

func newSenderIndex() senderIndex {
	return senderIndex{
		addrs:   make(map[string]*Class),
		domains: make(map[string]*Class),
		parents: make(map[string]*Class),
	}
}

// add indexes one sender pattern. Each pattern may belong to one class
// only: a sender in two classes would make the answer depend on order.
func (x *senderIndex) add(pattern string, c *Class) error {
	if pattern == NullSender {
		if x.null != nil {
			return fmt.Errorf("the null sender %q is already in class %q", pattern, x.null.Name)
		}
		x.null = c
		return nil
	}
	local, domain, ok := strings.Cut(pattern, "@")
	if !ok || strings.Contains(domain, "@") {
		return fmt.Errorf("%q is not a sender pattern (write user@example.org, @example.org, @.example.org or %q for bounces)", pattern, NullSender)
	}
	m, isAddr := x.addrs, local != ""
	switch {
	case local == "" && strings.HasPrefix(domain, "."):
		m, domain = x.parents, domain[1:]
	case local == "":
		m = x.domains
	case strings.ContainsAny(local, " \t<>\"(),:;[]\\"):
		return fmt.Errorf("%q: the local part has characters no address uses here", pattern)
	}
	d, err := normalizeName(domain)
	if err != nil {
		return fmt.Errorf("%q: %v", pattern, err)
	}
	key := d
	if isAddr {
		key = strings.ToLower(local) + "@" + d
	}
	if prev, dup := m[key]; dup {
		return fmt.Errorf("%q is already in class %q", pattern, prev.Name)
	}
	m[key] = c
	return nil
}

// classFor returns the class of an envelope sender, or nil for the default
// class. Local parts are compared case-insensitively, as every mainstream
// MTA treats them; domains by their A-label.
func (x *senderIndex) classFor(sender string) *Class {
	sender = strings.Trim(sender, "<>")
	if sender == "" {
		return x.null
	}
	i := strings.LastIndexByte(sender, '@')
	if i < 0 {
		return nil
	}
	domain, err := normalizeName(sender[i+1:])
	if err != nil {
		return nil
	}
	if c := x.addrs[strings.ToLower(sender[:i])+"@"+domain]; c != nil {
		return c
	}
	if c := x.domains[domain]; c != nil {
		return c
	}
	// "@.example.org" covers the subdomains of example.org, not itself.
	for i := 0; i < len(domain); i++ {
		if domain[i] == '.' {
			if c := x.parents[domain[i+1:]]; c != nil {
				return c
			}
		}
	}
	return nil
}
