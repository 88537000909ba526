package rules

import (
	"net"
	"net/netip"
	"os"
	"strings"
)

// The settings of what the daemon shows and who may see it: the log and
// the token that guards listen.http.

// logSettings checks the log: keys.
func (c *compiler) logSettings(s *Settings, l LogConfig) {
	if err := s.LogLevel.UnmarshalText([]byte(l.Level)); err != nil || !oneOf(strings.ToLower(l.Level), "debug", "info", "warn", "error") {
		c.errorf([]any{"log", "level"}, "log.level: %q is not a level (write debug, info, warn or error)", l.Level)
	}
	s.LogFormat = strings.ToLower(l.Format)
	if !oneOf(s.LogFormat, "text", "json") {
		c.errorf([]any{"log", "format"}, "log.format: %q is not a format (write text or json)", l.Format)
	}
	found := false
	for i, n := range decisionLogNames {
		if n == strings.ToLower(l.Decisions) {
			s.LogDecisions, found = DecisionLog(i), true
		}
	}
	if !found {
		c.errorf([]any{"log", "decisions"}, "log.decisions: %q is not a choice (write none, changes or all)", l.Decisions)
	}
}

func oneOf(s string, choices ...string) bool {
	for _, c := range choices {
		if s == c {
			return true
		}
	}
	return false
}

// httpAuth reads the bearer token of listen.http, which must have one when
// it listens beyond this machine: the status page and the API list the
// daemon's partners, and nothing else stands between them and the network.
func (c *compiler) httpAuth(s *Settings, cfg Config) {
	if f := cfg.HTTP.AuthFile; f != "" {
		data, err := os.ReadFile(f)
		switch {
		case err != nil:
			c.errorf([]any{"http", "auth_file"}, "http.auth_file: %v", err)
		case len(strings.TrimSpace(string(data))) == 0:
			c.errorf([]any{"http", "auth_file"}, "http.auth_file: %s holds no token (write one, e.g. the output of `openssl rand -hex 32`)", f)
		case strings.ContainsAny(strings.TrimSpace(string(data)), " \t\r\n"):
			c.errorf([]any{"http", "auth_file"}, "http.auth_file: %s must hold one token, without spaces or line breaks inside it", f)
		default:
			s.HTTPToken = strings.TrimSpace(string(data))
		}
	}
	addr := cfg.Listen.HTTP
	if addr == "" || strings.HasPrefix(addr, "unix:") || cfg.HTTP.AuthFile != "" || !validListenAddr(addr) {
		return
	}
	if host, _, _ := net.SplitHostPort(addr); !isLoopbackHost(host) {
		c.errorf([]any{"listen", "http"}, "listen.http: %s is reachable from other machines, and the status page lists your partners: set http.auth_file to a file holding a bearer token, or listen on 127.0.0.1", addr)
	}
}

// validListenAddr reports whether checkListenAddr accepts addr (an
// invalid one has its own error).
func validListenAddr(addr string) bool { return checkListenAddr(addr) == nil }

// isLoopbackHost reports whether a listen host is a loopback address or
// localhost; "" (every address) is not.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
