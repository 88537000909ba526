package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

const pinsUsage = "usage: tlspolicyd pins [-config FILE] list [-json] | add DESTINATION LEVEL | remove DESTINATION"

// pins runs `tlspolicyd pins`. It works on the store file directly when no
// daemon holds it, and otherwise through the running daemon's HTTP
// listener, so that the daemon's memory and its store stay one.
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

	switch cmd, args := rest[0], rest[1:]; {
	case cmd == "list":
		fs := flag.NewFlagSet("pins list", flag.ContinueOnError)
		fs.SetOutput(stderr)
		asJSON := fs.Bool("json", false, "print JSON")
		if fs.Parse(args) != nil || fs.NArg() != 0 {
			fmt.Fprintln(stderr, pinsUsage)
			return 2
		}
		list, err := admin.list()
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		if list == nil {
			list = []state.Pin{} // [] in JSON, not null
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(list)
		} else {
			printPins(stdout, list, time.Now())
		}
	case cmd == "add" && len(args) == 2:
		pin, err := admin.add(args[0], args[1], p.Settings.PinTTL)
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		fmt.Fprintf(stdout, "pinned %s at %s until %s\n", pin.Key, pin.Level, pin.Expires.UTC().Format(time.RFC3339))
	case cmd == "remove" && len(args) == 1:
		found, err := admin.remove(args[0])
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		if !found {
			fmt.Fprintf(stderr, "tlspolicyd: no pin for %s\n", args[0])
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
	daemon string      // the daemon's base URL otherwise
	token  string      // http.auth_file's token, if any
	client *http.Client
}

func openPinAdmin(s rules.Settings) (*pinAdmin, error) {
	st, err := state.OpenBolt(s.StatePath, 300*time.Millisecond)
	if err == nil {
		return &pinAdmin{store: st}, nil
	}
	if !errors.Is(err, state.ErrLocked) {
		return nil, err
	}
	addr := s.Listen.HTTP
	if addr == "" || strings.HasPrefix(addr, "unix:") {
		return nil, fmt.Errorf("%w, and the daemon has no TCP listen.http to ask instead; stop it or configure listen.http", err)
	}
	return &pinAdmin{daemon: "http://" + addr, token: s.HTTPToken, client: &http.Client{Timeout: 60 * time.Second}}, nil
}

func (a *pinAdmin) close() {
	if a.store != nil {
		a.store.Close()
	}
}

func (a *pinAdmin) list() ([]state.Pin, error) {
	if a.store != nil {
		return a.store.Pins()
	}
	var pins []state.Pin
	return pins, a.call(http.MethodGet, "/admin/pins", &pins)
}

func (a *pinAdmin) add(destination, level string, ttl time.Duration) (state.Pin, error) {
	if a.store != nil {
		p, err := policyd.AdminPin(destination, level, ttl, time.Now())
		if err != nil {
			return p, err
		}
		return p, a.store.PutPins(p)
	}
	var p state.Pin
	err := a.call(http.MethodPut, "/admin/pins/"+url.PathEscape(destination)+"?level="+url.QueryEscape(level), &p)
	return p, err
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

func printPins(w io.Writer, pins []state.Pin, now time.Time) {
	if len(pins) == 0 {
		fmt.Fprintln(w, "no pins")
		return
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tLEVEL\tSOURCE\tFIRST SEEN\tCONFIRMED\tEXPIRES\tLAST DOWNGRADE")
	day := func(t time.Time) string { return t.UTC().Format(time.DateOnly) }
	for _, p := range pins {
		expires := day(p.Expires)
		if !p.Valid(now) {
			expires += " (expired)"
		}
		downgrade := "-"
		if !p.LastDowngrade.IsZero() {
			downgrade = p.LastDowngrade.UTC().Format(time.RFC3339) + " " + p.DowngradeReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Key, p.Level, p.Source, day(p.FirstSeen), day(p.LastSeen), expires, downgrade)
	}
	tw.Flush()
}
