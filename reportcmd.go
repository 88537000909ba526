package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/report"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// history runs `tlspolicyd history`: the recorded answers of one
// destination, newest first.
func history(args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	p, rest, code := command("history", "usage: tlspolicyd history [-config FILE] [-json] DESTINATION", args, 1, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print the records as JSON")
	})
	if code >= 0 {
		return code
	}
	key, err := rules.ParseKey(rest[0])
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 2
	}
	access, err := openPinAdmin(p.Settings)
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	defer access.close()
	records, err := access.history(key.String())
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	if asJSON {
		return printJSON(stdout, stderr, records)
	}
	if len(records) == 0 {
		fmt.Fprintf(stdout, "no decision recorded for %s within state.history (%s)\n", key, p.Settings.HistoryTTL)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tMAP\tANSWER\tPREVIOUS\tRULE\tEVIDENCE")
	for _, r := range records {
		ev := r.Evidence
		var parts []string
		for _, kv := range [][2]string{{"probe", ev.Probe}, {"pin", ev.Pin}, {"mta-sts", ev.MTASTS}, {"dane", ev.DANE}, {"sender", ev.Sender}} {
			if kv[1] != "" {
				parts = append(parts, kv[0]+": "+kv[1])
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.UTC().Format(time.RFC3339), r.Map, r.Answer,
			dash(r.Previous), dash(r.Rule), dash(joinSemi(parts)))
	}
	tw.Flush()
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinSemi(parts []string) string {
	out := ""
	for i, p := range parts {
		if i > 0 {
			out += "; "
		}
		out += p
	}
	return out
}

// printJSON writes v as indented JSON, with ">" as itself.
func printJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	return 0
}

// history returns a destination's records, newest first.
func (a *pinAdmin) history(destination string) ([]state.Decision, error) {
	if a.store != nil {
		ds, err := a.store.Decisions(destination, 0)
		if ds == nil {
			ds = []state.Decision{}
		}
		return ds, err
	}
	var v policyd.DestinationView
	if err := a.call("GET", "/api/v1/destinations/"+url.PathEscape(destination), &v); err != nil {
		return nil, err
	}
	if v.History == nil {
		v.History = []state.Decision{}
	}
	return v.History, nil
}

// reportCmd runs `tlspolicyd report`: every known destination's posture.
func reportCmd(args []string, stdout, stderr io.Writer) int {
	var format, out string
	const usage = "usage: tlspolicyd report [-config FILE] [-format csv|json|html] [-o FILE]"
	p, _, code := command("report", usage, args, 0, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&format, "format", "csv", "csv, json or html")
		fs.StringVar(&out, "o", "", "write to this `file` instead of standard output")
	})
	if code >= 0 {
		return code
	}
	if format != "csv" && format != "json" && format != "html" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	config := p.File
	data, err := os.ReadFile(config)
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	sum := sha256.Sum256(data)
	access, err := openPinAdmin(p.Settings)
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	defer access.close()
	now := time.Now()
	views, source, err := access.views(p, now)
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	host, _ := os.Hostname()
	w := stdout
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		defer f.Close()
		w = f
	}
	if err := report.Write(w, format, report.New(views, now, host, config, hex.EncodeToString(sum[:]), source)); err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	return 0
}

// views are every known destination's views, from the daemon or the file,
// and which of the two answered.
func (a *pinAdmin) views(rs *rules.Rules, now time.Time) ([]policyd.DestinationView, string, error) {
	if a.store != nil {
		views, err := policyd.StoredViews(rs, a.store, now)
		return views, "state file", err
	}
	var out struct {
		Destinations []policyd.DestinationView `json:"destinations"`
	}
	err := a.call("GET", "/api/v1/destinations", &out)
	return out.Destinations, "daemon", err
}
