package acceptance

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// reloadRules returns a configuration in which example.org has exampleOrg
// and its subdomains have subdomains (any word, valid or not).
func reloadRules(exampleOrg, subdomains string) string {
	return listenInet + hermetic + fmt.Sprintf(`defaults:
  level: may
  upgrade: none
destinations:
  - match: example.org
    level: %s
  - match: .example.org
    level: %s
`, exampleOrg, subdomains)
}

const reloadsTotal = "tlspolicyd_config_reloads_total"

var (
	reloadSuccess = map[string]string{"result": "success"}
	reloadFailure = map[string]string{"result": "failure"}
)

func TestReload(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, reloadRules("encrypt", "encrypt"))
	table := d.socketmap(t, "tlspolicy")
	checkLookup(t, table, lookup{key: "example.org", want: encrypt}, "")
	if t.Failed() {
		t.FailNow()
	}

	// answers returns the two keys' answers as postmap shows them.
	answers := func() (string, string) {
		a, _, _ := postmap(t, "example.org", table)
		b, _, _ := postmap(t, "mx.example.org", table)
		return a, b
	}

	// A valid change takes effect, and counts as a successful reload.
	success0 := d.metric(t, reloadsTotal, reloadSuccess)
	failure0 := d.metric(t, reloadsTotal, reloadFailure)
	d.writeConfig(t, reloadRules("verify", "encrypt"))
	d.reload(t)
	eventually(t, pollTimeout, "valid reload", func() (bool, string) {
		got, _ := answers()
		s := d.metric(t, reloadsTotal, reloadSuccess)
		return got == verify && s > success0,
			fmt.Sprintf("example.org -> %q (want %q), %s%v = %v (was %v)", got, verify, reloadsTotal, reloadSuccess, s, success0)
	})
	success1 := d.metric(t, reloadsTotal, reloadSuccess)
	if f := d.metric(t, reloadsTotal, reloadFailure); f != failure0 {
		t.Errorf("a valid reload moved %s%v from %v to %v", reloadsTotal, reloadFailure, failure0, f)
	}

	// An invalid file is refused as a whole: the valid-looking change to
	// example.org in it must not take effect either.
	d.writeConfig(t, reloadRules("may", "verifyy"))
	d.reload(t)
	eventually(t, pollTimeout, "invalid reload counted", func() (bool, string) {
		f := d.metric(t, reloadsTotal, reloadFailure)
		return f > failure0, fmt.Sprintf("%s%v = %v (was %v)", reloadsTotal, reloadFailure, f, failure0)
	})
	if a, b := answers(); a != verify || b != encrypt {
		t.Errorf("after a refused reload: example.org -> %q, mx.example.org -> %q; want the old rules: %q, %q", a, b, verify, encrypt)
	}
	if s := d.metric(t, reloadsTotal, reloadSuccess); s != success1 {
		t.Errorf("an invalid reload moved %s%v from %v to %v", reloadsTotal, reloadSuccess, success1, s)
	}
	if code, err := d.healthz(); err != nil || code != http.StatusOK {
		t.Errorf("after a refused reload /healthz: %d, %v; want 200", code, err)
	}

	// And the daemon still reloads once the file is fixed.
	d.writeConfig(t, reloadRules("secure", "verify"))
	d.reload(t)
	eventually(t, pollTimeout, "reload after a refused one", func() (bool, string) {
		a, b := answers()
		s := d.metric(t, reloadsTotal, reloadSuccess)
		return a == secure && b == verify && s > success1,
			fmt.Sprintf("example.org -> %q (want %q), mx.example.org -> %q (want %q), %s%v = %v (was %v)",
				a, secure, b, verify, reloadsTotal, reloadSuccess, s, success1)
	})
}

// TestReloadRefusesWhatServeRefuses: SIGHUP with a file that would not
// start the daemon (empty, without a listener, unreadable, with a state
// file that cannot be written) is refused like an invalid one: the answers
// stay, the failure is counted, and the log names the file and says why
// and what to do.
func TestReloadRefusesWhatServeRefuses(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, reloadRules("verify", "encrypt"))
	table := d.socketmap(t, "tlspolicy")
	checkLookup(t, table, lookup{key: "example.org", want: verify}, "")
	if t.Failed() {
		t.FailNow()
	}
	regular := filepath.Join(d.dir, "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	valid := reloadRules("verify", "encrypt")
	noListener := valid[strings.Index(valid, hermetic):]
	tests := []struct {
		name  string
		write func(t *testing.T) // puts the bad file in place
		want  string             // in the logged error, after the file name
	}{
		{"empty file", func(t *testing.T) { d.writeConfig(t, "") },
			": the file is empty or holds only comments"},
		{"only comments", func(t *testing.T) { d.writeConfig(t, "# "+strings.ReplaceAll(valid, "\n", "\n# ")) },
			": the file is empty or holds only comments"},
		{"no listener", func(t *testing.T) { d.writeConfig(t, noListener) },
			fmt.Sprintf(":%d: no listener is configured", lineOf(t, noListener, "dns:"))},
		{"file removed", func(t *testing.T) { removeConfig(t, d) },
			": cannot read the configuration: no such file or directory"},
		{"a directory in its place", func(t *testing.T) {
			removeConfig(t, d)
			if err := os.Mkdir(d.configPath, 0o755); err != nil {
				t.Fatal(err)
			}
		}, ": cannot read the configuration: is a directory"},
		{"state.path under a regular file", func(t *testing.T) {
			removeConfig(t, d)
			d.writeConfig(t, strings.Replace(valid, "path: @DIR@/state.db", "path: "+regular+"/state.db", 1))
		}, fmt.Sprintf(":%d: state.path: %s/state.db cannot be created: %s is not a directory", lineOf(t, valid, "path: @DIR@"), regular, regular)},
	}
	for _, tc := range tests {
		failures := d.metric(t, reloadsTotal, reloadFailure)
		successes := d.metric(t, reloadsTotal, reloadSuccess)
		tc.write(t)
		d.reload(t)
		logged := d.configPath + tc.want
		eventually(t, pollTimeout, tc.name+": reload refused", func() (bool, string) {
			f := d.metric(t, reloadsTotal, reloadFailure)
			line := refusal(t, d, logged)
			return f == failures+1 && line != "", fmt.Sprintf("%s%v = %v (was %v); log line with %q: %q", reloadsTotal, reloadFailure, f, failures, logged, line)
		})
		if line := refusal(t, d, logged); !strings.Contains(line, "the running rules stay in force") || !strings.Contains(line, "fix=") {
			t.Errorf("%s: the log line does not say that the rules stay and what to do: %s", tc.name, line)
		}
		if s := d.metric(t, reloadsTotal, reloadSuccess); s != successes {
			t.Errorf("%s: %s%v moved from %v to %v", tc.name, reloadsTotal, reloadSuccess, successes, s)
		}
		if got, _, _ := postmap(t, "example.org", table); got != verify {
			t.Errorf("%s: after the refused reload example.org -> %q, want %q as before", tc.name, got, verify)
		}
	}

	// A valid file is still taken, and a listener it moves is named as
	// needing a restart while the rules apply at once.
	removeConfig(t, d)
	d.writeConfig(t, strings.Replace(reloadRules("secure", "encrypt"), "socketmap: @SOCKETMAP@", "socketmap: 127.0.0.1:1", 1))
	d.reload(t)
	eventually(t, pollTimeout, "valid reload with a moved listener", func() (bool, string) {
		got, _, _ := postmap(t, "example.org", table)
		log, _ := os.ReadFile(d.logPath)
		return got == secure && strings.Contains(string(log), "listen.socketmap changed: restart to apply"),
			fmt.Sprintf("example.org -> %q (want %q); log:\n%s", got, secure, log)
	})
}

// removeConfig removes the daemon's configuration file, or the directory
// a test put in its place.
func removeConfig(t *testing.T, d *daemon) {
	t.Helper()
	if err := os.RemoveAll(d.configPath); err != nil {
		t.Fatal(err)
	}
}

// refusal returns the last line of the daemon's log that refuses a reload
// and holds want, or "".
func refusal(t *testing.T, d *daemon, want string) string {
	t.Helper()
	log, err := os.ReadFile(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	found := ""
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "configuration reload refused") && strings.Contains(l, want) {
			found = l
		}
	}
	return found
}
