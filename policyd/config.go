package policyd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

// LoadConfig reads and validates the configuration file at path as the
// daemon needs it to start: every key valid, at least one listener, and a
// state file that the user running this process can open or create. It is
// the one validation behind `serve`, `check` and a reload (SIGHUP), so that
// check and a reload refuse exactly the files that serve refuses. The error
// is a rules.ConfigErrors, one "FILE:LINE: message" per problem.
func LoadConfig(path string) (*rules.Rules, error) {
	rs, err := rules.LoadFile(path)
	if err != nil {
		return nil, err
	}
	if errs := rs.ServeErrors(checkStatePath); len(errs) > 0 {
		return nil, errs
	}
	return rs, nil
}

// checkStatePath says why the state store could not be opened at path by
// the user running this process, or nil if it could. The store opens its
// file for reading and writing and creates it, and any missing directory
// above it, on first start. The check leaves nothing behind: it opens an
// existing file without changing it, and for a missing one it creates and
// removes a temporary file in the nearest directory that exists, which is
// where the store would create its own.
func checkStatePath(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	switch {
	case err == nil:
		return f.Close()
	case errors.Is(err, syscall.EISDIR):
		return fmt.Errorf("%s is a directory (name a file in it, e.g. %s)", path, filepath.Join(path, "state.db"))
	case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%s cannot be opened for reading and writing by %s: %v (give that user read and write access to it, or %s)",
			path, currentUser(), pathCause(err), setStatePath)
	}
	// The file is missing: walk up to the nearest directory that exists,
	// or to a file in the way.
	stateDir := filepath.Dir(path)
	fix := fmt.Sprintf("create %s owned by the user the service runs as, e.g. install -d -o tlspolicyd -m 750 %s; or %s",
		stateDir, stateDir, setStatePath)
	dir := stateDir
	for {
		fi, err := os.Stat(dir)
		if err == nil && !fi.IsDir() {
			return fmt.Errorf("%s cannot be created: %s is not a directory (%s)", path, dir, setStatePath)
		}
		if err == nil {
			break
		}
		missing := errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
		if !missing || filepath.Dir(dir) == dir {
			return fmt.Errorf("%s cannot be created by %s: %v (%s)", path, currentUser(), err, fix)
		}
		dir = filepath.Dir(dir)
	}
	probe, err := os.CreateTemp(dir, ".tlspolicyd-check-*")
	if err != nil {
		return fmt.Errorf("%s cannot be created: %s is not writable by %s: %v (%s)", path, dir, currentUser(), pathCause(err), fix)
	}
	probe.Close()
	os.Remove(probe.Name())
	return nil
}

// setStatePath is the fix every state.path error offers besides its own:
// a file the user can write, wherever that is.
const setStatePath = "set state.path to a file the user running tlspolicyd can write " +
	"(a relative path such as state.db is taken from $STATE_DIRECTORY when set, as systemd's StateDirectory= sets it, " +
	"else from the configuration file's folder)"

// pathCause is the reason of a file system error without the path, which
// the messages above already name.
func pathCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// currentUser names the user running this process, as permission errors
// must: `check` run by a postmaster is not the service's user.
func currentUser() string {
	uid := os.Geteuid()
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("user %s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}

// restartOnly names the settings that differ between start, the settings
// the daemon started with, and now, a reloaded file, among those the
// daemon puts in place once when it starts: the listeners, the state
// store, the log handler, and the resolver, prober, published-policy
// sources and caches built from them. Each name comes with what to do.
func restartOnly(start, now rules.Settings) []string {
	fixed := []struct {
		key   string
		value func(rules.Settings) any
		note  string // when part of the change applies at once
	}{
		{"listen.socketmap", func(s rules.Settings) any { return s.Listen.Socketmap }, ""},
		{"listen.tcptable", func(s rules.Settings) any { return s.Listen.TCPTable }, ""},
		{"listen.policy", func(s rules.Settings) any { return s.Listen.Policy }, ""},
		{"listen.exim", func(s rules.Settings) any { return s.Listen.Exim }, ""},
		{"listen.http", func(s rules.Settings) any { return s.Listen.HTTP }, ""},
		{"listen.socket_mode", func(s rules.Settings) any { return s.SocketMode }, ""},
		{"listen.max_connections", func(s rules.Settings) any { return s.MaxConnections }, ""},
		{"listen.idle_timeout", func(s rules.Settings) any { return s.IdleTimeout }, ""},
		{"state.path", func(s rules.Settings) any { return s.StatePath }, ""},
		{"state.pin_ttl", func(s rules.Settings) any { return s.PinTTL }, ""},
		{"state.redis", func(s rules.Settings) any { return s.Redis }, ""},
		{"log.format", func(s rules.Settings) any { return s.LogFormat }, ""},
		{"dns.servers", func(s rules.Settings) any { return s.DNSServers }, ""},
		{"dns.timeout", func(s rules.Settings) any { return s.DNSTimeout }, ""},
		{"dns.min_ttl", func(s rules.Settings) any { return s.DNSMinTTL }, ""},
		{"probe.port", func(s rules.Settings) any { return s.ProbePort }, ""},
		{"probe.helo", func(s rules.Settings) any { return s.ProbeHelo }, ""},
		{"probe.timeout", func(s rules.Settings) any { return s.ProbeTimeout }, ""},
		{"probe.ttl", func(s rules.Settings) any { return s.ProbeTTL }, ""},
		{"probe.negative_ttl", func(s rules.Settings) any { return s.ProbeNegTTL }, ""},
		{"probe.per_address", func(s rules.Settings) any { return s.ProbePerAddress }, ""},
		{"probe.wait", func(s rules.Settings) any { return requestTimeout(s) },
			"lookups wait the new time already; the reply deadline of connections follows it after a restart"},
		{"probe.ca_file", func(s rules.Settings) any { return s.ProbeCAFile }, ""},
		{"probe.allow_private", func(s rules.Settings) any { return s.AllowPrivate }, ""},
		{"mtasts.enabled", func(s rules.Settings) any { return s.MTASTSEnabled }, ""},
		{"mtasts.ca_file", func(s rules.Settings) any { return s.MTASTSCAFile }, ""},
		{"dane.enabled", func(s rules.Settings) any { return s.DANEEnabled }, ""},
		{"minimum_tls", func(s rules.Settings) any { return s.MinimumTLS },
			"answers use it already; probes and the pins they teach use it after a restart"},
	}
	var changed []string
	for _, f := range fixed {
		if reflect.DeepEqual(f.value(start), f.value(now)) {
			continue
		}
		msg := f.key + " changed: restart to apply"
		if f.note != "" {
			msg += " (" + f.note + ")"
		}
		changed = append(changed, msg)
	}
	return changed
}

// requestTimeout is how long a connection has for one request and its
// reply: a lookup may wait probe.wait for a probe, and must still make its
// deadline.
func requestTimeout(s rules.Settings) time.Duration {
	return max(wire.DefaultRequestTimeout, s.ProbeWait+5*time.Second)
}
