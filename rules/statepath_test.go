package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveStatePath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, written, config, stateDir string
		want, from                      string // from: a part of the note, "" for none
	}{
		{"absolute stands", "/var/lib/tlspolicyd/state.db", "/etc/tlspolicyd/rules.yaml", "/srv/state", "/var/lib/tlspolicyd/state.db", ""},
		{"relative, under systemd", "state.db", "/etc/tlspolicyd/rules.yaml", "/var/lib/tlspolicyd", "/var/lib/tlspolicyd/state.db", "$STATE_DIRECTORY (/var/lib/tlspolicyd)"},
		{"several state directories: the first", "pins/state.db", "/etc/tlspolicyd/rules.yaml", "/var/lib/a:/var/lib/b", "/var/lib/a/pins/state.db", "$STATE_DIRECTORY (/var/lib/a)"},
		{"relative, by hand", "state.db", "/home/pm/tlspolicyd/rules.yaml", "", "/home/pm/tlspolicyd/state.db", "the configuration file's folder (/home/pm/tlspolicyd)"},
		{"relative config", "../state/state.db", "conf/rules.yaml", "", "state/state.db", "the configuration file's folder (conf)"},
		{"config in the working directory", "state.db", "rules.yaml", "", "state.db", "the configuration file's folder (.)"},
	}
	for _, tc := range tests {
		path, from := ResolveStatePath(tc.written, tc.config, tc.stateDir)
		if path != tc.want || from != tc.from {
			t.Errorf("%s: ResolveStatePath(%q, %q, %q) = %q, %q; want %q, %q", tc.name, tc.written, tc.config, tc.stateDir, path, from, tc.want, tc.from)
		}
	}
}

// TestLoadFileResolvesStatePath: the rules every command loads carry the
// resolved, absolute state path, and a state file that cannot be written
// is reported with where a relative path was taken from.
func TestLoadFileResolvesStatePath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(file, []byte("listen:\n  socketmap: 127.0.0.1:10028\nstate:\n  path: state.db\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, err := loadFile(file, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "state.db"); rs.Settings.StatePath != want {
		t.Errorf("state path beside the configuration: %q, want %q", rs.Settings.StatePath, want)
	}
	stateDir := t.TempDir()
	if rs, err = loadFile(file, stateDir); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(stateDir, "state.db"); rs.Settings.StatePath != want {
		t.Errorf("state path under $STATE_DIRECTORY: %q, want %q", rs.Settings.StatePath, want)
	}
	errs := rs.ServeErrors(func(string) error { return os.ErrPermission })
	want := file + `:4: state.path "state.db" is taken from $STATE_DIRECTORY (` + stateDir + "): permission denied"
	if len(errs) != 1 || errs[0].Error() != want {
		t.Errorf("ServeErrors = %v\nwant %s", errs, want)
	}

	// A relative configuration path still gives an absolute state path,
	// so that the log and errors name the file wherever they are read.
	rel, err := filepath.Rel(mustGetwd(t), file)
	if err != nil {
		t.Skip("the temporary directory has no path relative to the working directory")
	}
	if rs, err = loadFile(rel, ""); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "state.db"); rs.Settings.StatePath != want {
		t.Errorf("state path of %s: %q, want %q", rel, rs.Settings.StatePath, want)
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// TestUpgradeLine: every rule knows the line of the upgrade that caps its
// evidence, its own or the defaults', or 0 for the built-in default.
func TestUpgradeLine(t *testing.T) {
	t.Parallel()
	const text = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: own.test
    upgrade: verify
  - match: inherits.test
    level: encrypt
`
	rs := mustLoad(t, text)
	line := func(s string) int {
		for i, l := range strings.Split(text, "\n") {
			if strings.Contains(l, s) {
				return i + 1
			}
		}
		t.Fatalf("%q not in the file", s)
		return 0
	}
	for _, tc := range []struct {
		rule *Rule
		want int
	}{
		{rs.Defaults, line("upgrade: encrypt")},
		{rs.Rules[0], line("upgrade: verify")},
		{rs.Rules[1], line("upgrade: encrypt")},
	} {
		if tc.rule.UpgradeLine != tc.want {
			t.Errorf("rule %q (index %d): UpgradeLine %d, want %d", tc.rule.Match, tc.rule.Index, tc.rule.UpgradeLine, tc.want)
		}
	}
	builtin := mustLoad(t, "defaults:\n  level: may\ndestinations:\n  - match: a.test\n")
	if builtin.Defaults.UpgradeLine != 0 || builtin.Rules[0].UpgradeLine != 0 {
		t.Errorf("no upgrade written: UpgradeLine %d and %d, want 0 and 0", builtin.Defaults.UpgradeLine, builtin.Rules[0].UpgradeLine)
	}
}
