package acceptance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runCLI runs tlspolicyd with args in dir and returns its exit code and its
// standard output and error together.
func runCLI(t *testing.T, dir string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, daemonBin, args...)
	cmd.Dir = dir
	cmd.Env = daemonEnv
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("tlspolicyd %s: did not finish within 30s; output:\n%s", strings.Join(args, " "), out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running tlspolicyd: %v", err)
	}
	checkRaces(t, "tlspolicyd "+strings.Join(args, " "), string(out))
	return cmd.ProcessState.ExitCode(), string(out)
}

// writeStatic writes a configuration template with fixed addresses (the
// commands that only read the file bind nothing) into dir. Its listen.http
// is noDaemon: the commands that ask a running daemon first find none.
func writeStatic(t *testing.T, dir, text string) string {
	t.Helper()
	text = strings.NewReplacer(
		phSocketmap, "127.0.0.1:10028",
		phTCPTable, "127.0.0.1:10029",
		phHTTP, noDaemon,
		phDNS, "127.0.0.1:1",
		phDir, dir,
	).Replace(text)
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// lineOf returns the 1-based number of the first line of text containing s.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%q not in the configuration", s)
	return 0
}

func TestCheck(t *testing.T) {
	t.Parallel()
	valid := listenInet + hermetic + rules
	tests := []struct {
		name   string
		config string
		// errorAt is the text on the line an error must name; empty for a
		// valid configuration.
		errorAt string
	}{
		{name: "valid", config: valid},
		{
			name:    "unknown key",
			config:  strings.Replace(valid, "    level: verify\n", "    levle: verify\n", 1),
			errorAt: "levle: verify",
		},
		{
			name:    "unknown level",
			config:  strings.Replace(valid, "    level: verify\n", "    level: verifyy\n", 1),
			errorAt: "level: verifyy",
		},
		{
			name:    "reserved class name",
			config:  strings.Replace(valid, "- name: phi", "- name: transport", 1),
			errorAt: "name: transport",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			abs := writeStatic(t, dir, tc.config)
			// FILE in the messages is the path as given: try an absolute and
			// a relative one.
			for _, path := range []string{abs, "rules.yaml"} {
				code, out := runCLI(t, dir, "check", "-config", path)
				if tc.errorAt == "" {
					if code != 0 {
						t.Errorf("check -config %s: exit %d, want 0; output:\n%s", path, code, out)
					}
					continue
				}
				prefix := fmt.Sprintf("%s:%d: ", path, lineOf(t, tc.config, tc.errorAt))
				if code != 1 || !hasLinePrefix(out, prefix) {
					t.Errorf("check -config %s: exit %d, want 1 and a line starting %q; output:\n%s", path, code, prefix, out)
				}
			}
		})
	}
}

func hasLinePrefix(out, prefix string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) && len(l) > len(prefix) {
			return true
		}
	}
	return false
}

// TestCommands checks the one-shot commands a postmaster scripts against.
func TestCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := writeStatic(t, dir, listenInet+hermetic+rules)
	// One-off commands build the DANE checker without a metrics registry;
	// that once panicked.
	daneConfig := writeStatic(t, t.TempDir(), listenInet+hermetic+"dane:\n  enabled: true\n"+rules)
	tests := []struct {
		name string
		args []string
		want string // a word the output must contain
	}{
		{"version", []string{"version"}, ""},
		{"query", []string{"query", "-config", config, "example.org"}, "verify"},
		{"query subdomain", []string{"query", "-config", config, "mx.example.org"}, "encrypt"},
		{"query sender class", []string{"query", "-config", config, "-sender", "doctor@clinic.example.org", "unmatched.test"}, "verify"},
		{"query with dane", []string{"query", "-config", daneConfig, "example.org"}, "verify"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out := runCLI(t, dir, tc.args...)
			if code != 0 || strings.TrimSpace(out) == "" || !strings.Contains(out, tc.want) {
				t.Errorf("tlspolicyd %s: exit %d, want 0 and output containing %q; output:\n%s",
					strings.Join(tc.args, " "), code, tc.want, out)
			}
		})
	}
}

// TestCheckRefusesWhatServeRefuses: check fails, with the very lines serve
// gives, on a file that serve refuses although its keys are valid; and it
// accepts a state file still to be created without creating anything.
func TestCheckRefusesWhatServeRefuses(t *testing.T) {
	t.Parallel()
	valid := listenInet + hermetic + rules
	tests := []struct {
		name, config string
		want         string // after "FILE", in the first line of both outputs
	}{
		{"empty", "", ": the file is empty or holds only comments: "},
		{"only comments", "# tlspolicyd\n#\n# " + strings.ReplaceAll(valid, "\n", "\n# ") + "\n", ": the file is empty or holds only comments: "},
		{"no listener", hermetic + rules, ":1: no listener is configured: "},
		{"state.path under a regular file", strings.Replace(valid, "path: @DIR@/state.db", "path: @DIR@/regular/state.db", 1),
			fmt.Sprintf(":%d: state.path: ", lineOf(t, valid, "path: @DIR@"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "regular"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			path := writeStatic(t, dir, tc.config)
			code, out := runCLI(t, dir, "check", "-config", path)
			if code != 1 || !strings.HasPrefix(out, path+tc.want) {
				t.Errorf("check: exit %d, want 1 and output starting %q; output:\n%s", code, path+tc.want, out)
			}
			serveCode, serveOut := runCLI(t, dir, "serve", "-config", path)
			if serveCode != 1 || !strings.HasPrefix(serveOut, out) {
				t.Errorf("serve: exit %d, want 1 and the lines check gave:\n%s\noutput:\n%s", serveCode, out, serveOut)
			}
		})
	}

	t.Run("state.path says why and what to do", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		regular := filepath.Join(dir, "regular")
		if err := os.WriteFile(regular, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		path := writeStatic(t, dir, strings.Replace(valid, "path: @DIR@/state.db", "path: @DIR@/regular/state.db", 1))
		_, out := runCLI(t, dir, "check", "-config", path)
		want := fmt.Sprintf("%s:%d: state.path: %s/state.db cannot be created: %s is not a directory (set state.path to a file the user running tlspolicyd can write "+
			"(a relative path such as state.db is taken from $STATE_DIRECTORY when set, as systemd's StateDirectory= sets it, else from the configuration file's folder))\n",
			path, lineOf(t, valid, "path: @DIR@"), regular, regular)
		if out != want {
			t.Errorf("check output:\n%s\nwant\n%s", out, want)
		}
	})

	t.Run("state.path to be created", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		path := writeStatic(t, dir, strings.Replace(valid, "path: @DIR@/state.db", "path: @DIR@/new/state.db", 1))
		if code, out := runCLI(t, dir, "check", "-config", path); code != 0 {
			t.Errorf("check: exit %d, want 0; output:\n%s", code, out)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("check left %d entries in %s, want only the configuration", len(entries), dir)
		}
	})
}
