package acceptance

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Destination patterns on the built binary: lists, match files, the "*."
// mistake, and every mistake of a file reported by one check.

// TestCheckRefusesWildcards: "*.example.com" would never match a key
// Postfix sends; check says what to write instead, at its line.
func TestCheckRefusesWildcards(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := listenInet + hermetic + `destinations:
  - match: "*.example.com"
    level: verify
`
	path := writeStatic(t, dir, config)
	code, out := runCLI(t, dir, "check", "-config", path)
	want := fmt.Sprintf(`%s:%d: destinations[0].match: "*.example.com": "*" is no wildcard here; `+
		`write ".example.com" for any subdomain of example.com (and list example.com as well if the domain itself is meant)`,
		path, lineOf(t, config, `"*.example.com"`))
	if code != 1 || strings.TrimSpace(out) != want {
		t.Errorf("check: exit %d, output:\n%s\nwant exit 1 and:\n%s", code, out, want)
	}
}

// TestCheckReportsEveryError: an unknown key, a value of the wrong type
// and a "*." pattern, all reported by one run, each at its line, in line
// order, with errors in a match file at that file's own lines.
func TestCheckReportsEveryError(t *testing.T) {
	t.Parallel()
	config := strings.Replace(listenInet, "listen:\n", "listen:\n  max_connections: 1k\n", 1) + hermetic + `destinations:
  - match: partner.example
    levle: verify
  - match: "*.example.com"
    level: verify
  - match_file: partners.txt
    level: verify
`
	for _, relative := range []bool{false, true} {
		t.Run(fmt.Sprintf("relative %v", relative), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "partners.txt"), []byte("# partners\npartner-a.example\n*.partner-b.example\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			path := writeStatic(t, dir, config)
			partners := filepath.Join(dir, "partners.txt")
			if relative {
				path, partners = "rules.yaml", "partners.txt"
			}
			code, out := runCLI(t, dir, "check", "-config", path)
			want := []string{
				fmt.Sprintf(`%s:%d: listen.max_connections: "1k" is not a whole number (write digits only, without quotes, e.g. max_connections: 1000)`, path, lineOf(t, config, "1k")),
				fmt.Sprintf(`%s:%d: unknown key "levle" in destinations[0]; did you mean "level"?`, path, lineOf(t, config, "levle")),
				fmt.Sprintf(`%s:%d: destinations[1].match: "*.example.com": "*" is no wildcard here; write ".example.com"`, path, lineOf(t, config, `"*.example.com"`)),
				partners + `:3: "*.partner-b.example": "*" is no wildcard here; write ".partner-b.example"`,
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code != 1 || len(lines) != len(want) {
				t.Fatalf("check: exit %d, %d lines; want exit 1 and %d lines; output:\n%s", code, len(lines), len(want), out)
			}
			for i, w := range want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d:\n got %s\nwant %s...", i+1, lines[i], w)
				}
			}
		})
	}
}

// TestListAndMatchFile: a rule with a list and a rule with a match file
// answer Postfix; query cites the pattern's own line; an edited match
// file takes effect on SIGHUP.
func TestListAndMatchFile(t *testing.T) {
	t.Parallel()
	partners := filepath.Join(t.TempDir(), "partners.txt")
	writePartners := func(text string) {
		t.Helper()
		if err := os.WriteFile(partners, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writePartners("# partners that must get verified TLS\npartner-c.example\n\n.partner-d.example\n")
	config := listenInet + hermetic + `defaults:
  level: may
  upgrade: none
destinations:
  - match: [partner-a.example, "[relay.partner-b.example]:587"]
    level: secure
  - match_file: ` + partners + `
    level: verify
`
	d := startDaemon(t, config)
	table := d.socketmap(t, "tlspolicy")
	for _, l := range []lookup{
		{key: "partner-a.example", want: secure},
		{key: "[relay.partner-b.example]:587", want: secure},
		{key: "partner-c.example", want: verify},
		{key: "mx.partner-d.example", want: verify},
		{key: "partner-d.example", want: may},
		{key: "partner-e.example", want: may},
	} {
		checkLookup(t, table, l, "")
	}
	code, out := runCLI(t, d.dir, "query", "-config", d.configPath, "mx.partner-d.example")
	why := fmt.Sprintf(`floor verify from %s:4 (match_file of destinations[1] at %s:%d) match ".partner-d.example"`,
		partners, d.configPath, lineOf(t, config, "match_file:"))
	if code != 0 || !strings.Contains(out, why) {
		t.Errorf("query: exit %d, output:\n%s\nwant exit 0 and %q", code, out, why)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The match file is read again on SIGHUP: a new partner answers, one
	// taken out falls back to the defaults.
	successes := d.metric(t, reloadsTotal, reloadSuccess)
	writePartners("partner-c.example\npartner-e.example\n")
	d.reload(t)
	eventually(t, pollTimeout, "the edited match file after SIGHUP", func() (bool, string) {
		e, _, _ := postmap(t, "partner-e.example", table)
		sub, _, _ := postmap(t, "mx.partner-d.example", table)
		return e == verify && sub == may, fmt.Sprintf("partner-e.example -> %q (want %q), mx.partner-d.example -> %q (want %q)", e, verify, sub, may)
	})
	if s := d.metric(t, reloadsTotal, reloadSuccess); s != successes+1 {
		t.Errorf("%s%v = %v, want %v", reloadsTotal, reloadSuccess, s, successes+1)
	}

	// A mistake in the match file refuses the reload like any other: the
	// rules in force stay, and the log cites the file's line.
	writePartners("partner-c.example\n*.partner-f.example\n")
	d.reload(t)
	// The log's text format escapes the quotes of the message.
	logged := partners + `:2: \"*.partner-f.example\": \"*\" is no wildcard here`
	eventually(t, pollTimeout, "a refused reload citing the match file", func() (bool, string) {
		line := refusal(t, d, logged)
		return line != "", fmt.Sprintf("no log line refusing the reload with %q", logged)
	})
	checkLookup(t, table, lookup{key: "partner-e.example", want: verify}, "")
}
