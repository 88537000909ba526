package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// probe runs `tlspolicyd probe`: one live probe, printed per MX host.
func probe(args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	p, rest, code := command("probe", "usage: tlspolicyd probe [-config FILE] [-json] DOMAIN", args, 1, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	})
	if code >= 0 {
		return code
	}
	target, err := policyd.Target(rest[0])
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 2
	}
	if nexthop, ok := policyd.Bracketed(target); ok {
		fmt.Fprintf(stderr, "tlspolicyd: %s names %s without brackets, which Postfix (and a probe) looks up as a domain's MX records, "+
			"and an IP address has none (NXDOMAIN); write %s to probe that address, as Postfix delivers to it\n", rest[0], target.Name, nexthop)
		return 2
	}
	g, ok := newGatherer(p, stderr)
	if !ok {
		return 1
	}
	f := g.Gather(context.Background(), target, policyd.Findings{})
	// Notes go to stderr with -json, so that stdout stays one JSON value.
	notes := stdout
	if asJSON {
		notes = stderr
		if code := printJSON(stdout, stderr, policyd.FindingsView(p, rest[0], target, f)); code != 0 {
			return code
		}
	} else {
		printFindings(stdout, f, p.Settings.MinTLSVersion)
	}
	warnDowngrade(notes, stderr, p, target, f.Probe)
	if f.Failed() {
		return 1
	}
	return 0
}

// warnDowngrade says so when the probe saw less than the destination's
// pin: what a STARTTLS-stripping attacker on the path would cause, and
// what the daemon does about it.
func warnDowngrade(w, stderr io.Writer, rs *rules.Rules, target tlsprobe.Target, r tlsprobe.Report) {
	if r.Failed() {
		return // no evidence, so nothing below a pin either
	}
	pins, err := readPins(rs.Settings)
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd: pins not read, so a probe below a pin cannot be shown:", err)
		return
	}
	now := time.Now()
	for _, pin := range pins {
		if pin.Key != target.Key() || !policyd.ProbeBelowPin(pin, r, now) {
			continue
		}
		answer := "the daemon keeps answering " + pin.Level
		if c := policyd.CapOfPin(rs, pin); c != nil {
			answer = fmt.Sprintf("the daemon keeps answering %s (%s)", c.Answered, c.Note)
		}
		fmt.Fprintf(w, "warning: possible downgrade attack: %s is pinned at %s (first seen %s, confirmed %s, expires %s), "+
			"but this probe saw %s (%s). Something on the path may be stripping STARTTLS or replacing the certificate; "+
			"%s, so Postfix defers the mail rather than send it less protected. "+
			"If the partner really changed its servers, remove the pin: tlspolicyd pins remove %s\n",
			pin.Key, pin.Level, pin.FirstSeen.UTC().Format(time.RFC3339), pin.LastSeen.UTC().Format(time.RFC3339),
			pin.Expires.UTC().Format(time.RFC3339), r.Capability, r.Reason(rs.Settings.MinTLSVersion), answer, pin.Key)
	}
}

// printFindings writes the probe table and what the destination publishes.
func printFindings(w io.Writer, f policyd.Findings, minVersion uint16) {
	printProbe(w, f.Probe, minVersion)
	if f.DANE != dane.NoDANE || f.DANEDetail != "" {
		fmt.Fprintf(w, "DANE: %s", f.DANE)
		if f.DANEDetail != "" {
			fmt.Fprintf(w, " (%s)", f.DANEDetail)
		}
		fmt.Fprintln(w)
	}
	switch {
	case f.STS != nil:
		fmt.Fprintf(w, "MTA-STS: mode %s, mx %s, max_age %s, id %s (%s)\n", f.STS.Mode, strings.Join(f.STS.MX, " "),
			f.STS.MaxAge, f.STS.ID, f.STSNote)
	case f.STSNote != "":
		fmt.Fprintf(w, "MTA-STS: %s\n", f.STSNote)
	}
}

// printProbe writes a probe result as a table a postmaster can read.
func printProbe(w io.Writer, r tlsprobe.Report, minVersion uint16) {
	verdict := r.Capability.String()
	if r.Failed() {
		verdict = "no evidence"
	}
	fmt.Fprintf(w, "probe of %s: %s (%s), %s\n", r.Target.Key(), verdict, r.Reason(minVersion),
		r.Duration.Round(time.Millisecond))
	if len(r.Hosts) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PREF\tHOST\tADDRESS\tPROBED\tSTARTTLS\tTLS\tCIPHER\tCERTIFICATE\tRESULT")
	for _, h := range r.Hosts {
		addr := "-"
		if h.Addr.IsValid() {
			addr = h.Addr.String()
		}
		result := h.Capability.String()
		if h.Cause != tlsprobe.CauseNone {
			result += " (" + h.Cause.String() + ")"
		}
		probed := "-"
		if !h.ProbedAt.IsZero() {
			probed = h.ProbedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Preference, h.Host, addr, probed, yesNo(h.STARTTLS),
			h.Version(), cipherName(h.Cipher), certSummary(h), result)
	}
	tw.Flush()
	for _, h := range r.Hosts {
		if h.Detail != "" {
			fmt.Fprintf(w, "  %s %s: %s\n", h.Host, h.Addr, h.Detail)
		}
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func cipherName(id uint16) string {
	if id == 0 {
		return "-"
	}
	return tls.CipherSuiteName(id)
}

func certSummary(h tlsprobe.HostReport) string {
	if h.NotAfter.IsZero() {
		return "-"
	}
	var parts []string
	switch {
	case h.ChainValid && h.NameValid:
		parts = append(parts, "valid")
	default:
		if !h.ChainValid {
			if h.SelfSigned {
				parts = append(parts, "self-signed")
			} else {
				parts = append(parts, "untrusted")
			}
		}
		if !h.NameValid {
			parts = append(parts, "wrong name")
		}
	}
	parts = append(parts, "until "+h.NotAfter.UTC().Format(time.DateOnly))
	return strings.Join(parts, ", ")
}
