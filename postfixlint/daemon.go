package postfixlint

import (
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// Which tables are the daemon's: a socketmap or tcp_table at one of its
// listen addresses. Postfix and the daemon may write one address
// differently (localhost and 127.0.0.1, a unix socket relative to the queue
// directory), so addresses are compared by what they reach.

// ownership is how a table relates to the daemon.
type ownership uint8

const (
	// foreign is any other table.
	foreign ownership = iota
	// ownSocketmap is a socketmap at listen.socketmap.
	ownSocketmap
	// ownTCP is a tcp_table at listen.tcptable (it answers the default
	// map only).
	ownTCP
	// elsewhere is a socketmap that names one of the daemon's maps at an
	// address the daemon does not listen on: meant for the daemon, but
	// Postfix reaches something else, or nothing.
	elsewhere
)

// owner classifies a table, and returns the socketmap name it asks for.
func (l *linter) owner(t *Table) (ownership, string) {
	listen := l.rs.Settings.Listen
	switch t.Type {
	case "socketmap":
		i := strings.LastIndexByte(t.Name, ':')
		if i < 0 {
			return foreign, ""
		}
		endpoint, name := t.Name[:i], t.Name[i+1:]
		if listen.Socketmap != "" && l.sameEndpoint(listen.Socketmap, endpoint) {
			return ownSocketmap, name
		}
		if l.isDaemonMap(name) {
			return elsewhere, name
		}
	case "tcp":
		if listen.TCPTable != "" && l.sameEndpoint(listen.TCPTable, "inet:"+t.Name) {
			return ownTCP, rules.MapTLSPolicy
		}
	}
	return foreign, ""
}

// isDaemonMap reports whether a socketmap name is one the daemon answers.
func (l *linter) isDaemonMap(name string) bool {
	return name == rules.MapTLSPolicy || name == rules.MapTransport || name == rules.MapSenderTransport || l.rs.Class(name) != nil
}

// sameEndpoint reports whether a daemon listen address ("host:port" or
// "unix:/path") and a Postfix endpoint ("inet:host:port", "unix:path")
// reach the same listener.
func (l *linter) sameEndpoint(listen, endpoint string) bool {
	network, addr, _ := strings.Cut(endpoint, ":")
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		if network != "unix" {
			return false
		}
		if !filepath.IsAbs(addr) {
			// A chrooted smtp(8) names the socket relative to the queue
			// directory, and so does one that is not chrooted (its
			// working directory is the queue directory).
			addr = filepath.Join(l.pf.QueueDirectory, addr)
		}
		return filepath.Clean(addr) == filepath.Clean(path)
	}
	if network != "inet" {
		return false
	}
	lh, lp, err1 := net.SplitHostPort(listen)
	h, p, err2 := net.SplitHostPort(addr)
	if err1 != nil || err2 != nil || lp != p {
		return false
	}
	switch {
	case strings.EqualFold(lh, h), lh == "", lh == "0.0.0.0", lh == "::":
		return true
	}
	return isLoopback(lh) && isLoopback(h)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// ourTable is the Postfix table that asks the daemon's map name: a
// socketmap at listen.socketmap (a unix socket inside the queue directory
// named relative to it, as a chrooted smtp(8) needs), or for the default
// map without a socketmap listener, the tcp_table. "" when the daemon has
// no listener that serves it.
func (l *linter) ourTable(name string) string {
	listen := l.rs.Settings.Listen
	if listen.Socketmap == "" {
		if name == rules.MapTLSPolicy && listen.TCPTable != "" {
			return "tcp:" + connectable(listen.TCPTable)
		}
		return ""
	}
	if path, ok := strings.CutPrefix(listen.Socketmap, "unix:"); ok {
		if q := l.pf.QueueDirectory; q != "" {
			if rel, err := filepath.Rel(q, path); err == nil && !strings.HasPrefix(rel, "..") {
				path = rel
			}
		}
		return "socketmap:unix:" + path + ":" + name
	}
	return "socketmap:inet:" + connectable(listen.Socketmap) + ":" + name
}

// connectable turns a listen address on every interface into one that a
// client on this machine connects to.
func connectable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// listenLine is the line of the listener a table should point at.
func (l *linter) listenLine() int {
	if n := l.settingLine("listen", "socketmap"); n > 0 {
		return n
	}
	if n := l.settingLine("listen", "tcptable"); n > 0 {
		return n
	}
	return l.settingLine("listen")
}

// listenText names the daemon's map listeners for messages.
func (l *linter) listenText() string {
	listen := l.rs.Settings.Listen
	var parts []string
	if listen.Socketmap != "" {
		parts = append(parts, "listen.socketmap "+listen.Socketmap)
	}
	if listen.TCPTable != "" {
		parts = append(parts, "listen.tcptable "+listen.TCPTable)
	}
	if len(parts) == 0 {
		return "no listen.socketmap or listen.tcptable"
	}
	return strings.Join(parts, " and ")
}
