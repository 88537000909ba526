package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

const pinsUsage = "usage: tlspolicyd pins [-config FILE] list [-json] | add [-force] DESTINATION LEVEL | remove DESTINATION"

// pins runs `tlspolicyd pins`. It works through the running daemon's HTTP
// listener when a daemon answers there, so that the daemon's memory and
// its store stay one, and otherwise on the store file directly.
func pins(args []string, stdout, stderr io.Writer) int {
	p, rest, code := command("pins", pinsUsage, args, -1, stderr, nil)
	if code >= 0 {
		return code
	}
	admin, err := openPinAdmin(p.Settings)
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	defer admin.close()

	cmd, args := rest[0], rest[1:]
	fs := flag.NewFlagSet("pins "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON (list)")
	force := fs.Bool("force", false, "lower a pin in force (add)")
	if fs.Parse(args) != nil {
		fmt.Fprintln(stderr, pinsUsage)
		return 2
	}
	args = fs.Args()
	switch {
	case cmd == "list" && len(args) == 0 && !*force:
		list, err := admin.statuses(p)
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(list)
		} else {
			printPins(stdout, list, time.Now())
		}
	case cmd == "add" && len(args) == 2 && !*asJSON:
		st, err := admin.add(p, args[0], args[1], *force)
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		fmt.Fprintf(stdout, "pinned %s at %s until %s (%s)\n", st.Key, st.Level, st.Expires.UTC().Format(time.RFC3339), admin.where())
		if st.Capped != nil {
			// The pin is kept at its level (it holds should the cap be
			// raised), but what Postfix is told is what matters now.
			fmt.Fprintf(stdout, "  %s\n", st.Capped.Note)
		}
	case cmd == "remove" && len(args) == 1 && !*asJSON && !*force:
		found, err := admin.remove(args[0])
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		if !found {
			fmt.Fprintf(stderr, "tlspolicyd: no pin for %s (tlspolicyd pins list shows the pins)\n", args[0])
			return 1
		}
		fmt.Fprintf(stdout, "removed the pin of %s\n", args[0])
	default:
		fmt.Fprintln(stderr, pinsUsage)
		return 2
	}
	return 0
}

// pinAdmin changes pins in the store file or through the daemon.
// pinAdmin reaches the daemon's state: the store file when no daemon
// holds it, else the running daemon over listen.http. pins, history,
// report and query use it.
type pinAdmin struct {
	store  *state.Bolt // the file, when no daemon holds it
	path   string      // its path
	daemon string      // the daemon's base URL otherwise
	token  string      // http.auth_file's token, if any
	client *http.Client
}

// openPinAdmin reaches the daemon's state. A daemon that answers on
// listen.http is asked first: a relative state.path is resolved from
// $STATE_DIRECTORY, which a postmaster's shell does not set as systemd
// does for the service, so the file this command would open is not
// necessarily the daemon's. Else the store file is opened; one that a
// daemon holds locked sends the command to that daemon after all.
func openPinAdmin(s rules.Settings) (*pinAdmin, error) {
	daemon := daemonAdmin(s)
	if daemon != nil && daemon.answers() {
		return daemon, nil
	}
	return openStateFile(s, daemon)
}

// readPins returns the daemon's pins for the commands that only read them
// (query, probe), as openPinAdmin finds them; a state file that does not
// exist yet holds none, and is not created for it.
func readPins(s rules.Settings) ([]state.Pin, error) {
	daemon := daemonAdmin(s)
	if daemon == nil || !daemon.answers() {
		if _, err := os.Stat(s.StatePath); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		a, err := openStateFile(s, daemon)
		if err != nil {
			return nil, err
		}
		daemon = a
	}
	defer daemon.close()
	return daemon.list()
}

// openStateFile opens the state file, or, when a daemon holds it, goes to
// that daemon (nil: the daemon cannot be asked).
func openStateFile(s rules.Settings, daemon *pinAdmin) (*pinAdmin, error) {
	st, err := state.OpenBolt(s.StatePath, 300*time.Millisecond)
	switch {
	case err == nil:
		return &pinAdmin{store: st, path: s.StatePath}, nil
	case !errors.Is(err, state.ErrLocked):
		return nil, fmt.Errorf("%w (no daemon answered on listen.http to ask instead; run this as the user the daemon runs as, "+
			"or point state.path at the daemon's state file: a relative state.path is taken from $STATE_DIRECTORY when set, "+
			"else from the configuration file's folder)", err)
	case daemon == nil:
		return nil, fmt.Errorf("%w, and the daemon has no TCP listen.http to ask instead; stop it or configure listen.http", err)
	}
	return daemon, nil
}

// daemonAdmin is the way to the daemon over listen.http, or nil when it
// has no TCP HTTP listener.
func daemonAdmin(s rules.Settings) *pinAdmin {
	addr := s.Listen.HTTP
	if addr == "" || strings.HasPrefix(addr, "unix:") {
		return nil
	}
	return &pinAdmin{daemon: "http://" + addr, token: s.HTTPToken, client: &http.Client{Timeout: 60 * time.Second}}
}

// answers reports whether a daemon serves on listen.http now.
func (a *pinAdmin) answers() bool {
	c := &http.Client{Timeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(a.daemon + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (a *pinAdmin) close() {
	if a.store != nil {
		a.store.Close()
	}
	if a.client != nil {
		a.client.CloseIdleConnections()
	}
}

// where says which state a change went to, for the command's output.
func (a *pinAdmin) where() string {
	if a.store != nil {
		return "in " + a.path
	}
	return "through the daemon on " + strings.TrimPrefix(a.daemon, "http://")
}

// list returns every pin, valid or expired.
func (a *pinAdmin) list() ([]state.Pin, error) {
	if a.store != nil {
		return a.store.Pins()
	}
	var list []policyd.PinStatus
	if err := a.call(http.MethodGet, "/admin/pins", &list); err != nil {
		return nil, err
	}
	pins := make([]state.Pin, len(list))
	for i, st := range list {
		pins[i] = st.Pin
	}
	return pins, nil
}

// statuses returns every pin with how the rules cap it: the daemon's
// rules in force when it answers, else rs.
func (a *pinAdmin) statuses(rs *rules.Rules) ([]policyd.PinStatus, error) {
	if a.store != nil {
		pins, err := a.store.Pins()
		if err != nil {
			return nil, err
		}
		sort.Slice(pins, func(i, j int) bool { return pins[i].Key < pins[j].Key })
		return policyd.PinStatuses(rs, pins), nil
	}
	list := []policyd.PinStatus{} // [] in JSON, not null
	return list, a.call(http.MethodGet, "/admin/pins", &list)
}

// add pins a destination at level; lowering the pin in force needs force.
func (a *pinAdmin) add(rs *rules.Rules, destination, level string, force bool) (policyd.PinStatus, error) {
	if a.store != nil {
		now := time.Now()
		p, err := policyd.AdminPin(destination, level, rs.Settings.PinTTL, now)
		if err != nil {
			return policyd.PinStatus{}, err
		}
		if !force {
			pins, err := a.store.Pins()
			if err != nil {
				return policyd.PinStatus{}, err
			}
			for i := range pins {
				if pins[i].Key != p.Key {
					continue
				}
				if err := policyd.LowersPin(&pins[i], p, now); err != nil {
					return policyd.PinStatus{}, err
				}
			}
		}
		return policyd.PinStatus{Pin: p, Capped: policyd.CapOfPin(rs, p)}, a.store.PutPins(p)
	}
	q := url.Values{"level": {level}}
	if force {
		q.Set("force", "true")
	}
	var st policyd.PinStatus
	err := a.call(http.MethodPut, "/admin/pins/"+url.PathEscape(destination)+"?"+q.Encode(), &st)
	var he httpError
	if errors.As(err, &he) && (he.code == http.StatusBadRequest || he.code == http.StatusConflict) {
		// The daemon's reason is the one the store file gives: say it
		// the same way.
		return st, errors.New(he.text)
	}
	return st, err
}

func (a *pinAdmin) remove(destination string) (bool, error) {
	if a.store != nil {
		key, err := policyd.PinKey(destination)
		if err != nil {
			return false, err
		}
		return a.store.DeletePin(key)
	}
	err := a.call(http.MethodDelete, "/admin/pins/"+url.PathEscape(destination), nil)
	var he httpError
	if errors.As(err, &he) && he.code == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

type httpError struct {
	code int
	text string
}

func (e httpError) Error() string { return fmt.Sprintf("daemon answered %d: %s", e.code, e.text) }

// call makes one admin request to the daemon and decodes its JSON reply.
func (a *pinAdmin) call(method, path string, out any) error {
	req, err := http.NewRequest(method, a.daemon+path, nil)
	if err != nil {
		return err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("the daemon holds the state store, and asking it failed: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if resp.StatusCode >= 300 {
		return httpError{resp.StatusCode, strings.TrimSpace(string(body))}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

func printPins(w io.Writer, pins []policyd.PinStatus, now time.Time) {
	if len(pins) == 0 {
		fmt.Fprintln(w, "no pins")
		return
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tLEVEL\tANSWERED\tSOURCE\tFIRST SEEN\tCONFIRMED\tEXPIRES\tLAST DOWNGRADE")
	day := func(t time.Time) string { return t.UTC().Format(time.DateOnly) }
	var notes []string
	for _, p := range pins {
		expires := day(p.Expires)
		if !p.Valid(now) {
			expires += " (expired)"
		}
		downgrade := "-"
		if !p.LastDowngrade.IsZero() {
			downgrade = p.LastDowngrade.UTC().Format(time.RFC3339) + " " + p.DowngradeReason
		}
		answered := p.Level
		if p.Capped != nil {
			answered = p.Capped.Answered + " (capped)"
			notes = append(notes, p.Key+": "+p.Capped.Note)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Key, p.Level, answered, p.Source, day(p.FirstSeen), day(p.LastSeen), expires, downgrade)
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(w, "  "+n)
	}
}
