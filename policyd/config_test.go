package policyd

import (
	"bufio"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
	"github.com/tlspolicyd/tlspolicyd/rules"
)

// TestLoadConfig: the validation of serve, check and reload refuses every
// file that would not start the daemon, each with its FILE:LINE and what
// to do, and accepts the rest.
func TestLoadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	listen := "listen:\n  socketmap: 127.0.0.1:10028\n"
	state := func(path string) string { return "state:\n  path: " + path + "\n" }
	tests := []struct {
		name, config string
		want         string // "" for valid; else the whole first line after "FILE"
	}{
		{"valid", listen + state(filepath.Join(dir, "state.db")), ""},
		{"http alone", "listen:\n  http: 127.0.0.1:10032\n" + state(filepath.Join(dir, "state.db")), ""},
		{"state directories to create", listen + state(filepath.Join(dir, "new", "sub", "state.db")), ""},
		{"empty", "", ": the file is empty or holds only comments: "},
		{"only comments", "# listen:\n#   socketmap: 127.0.0.1:10028\n\n", ": the file is empty or holds only comments: "},
		{"no listener", "defaults:\n  level: may\n" + state(filepath.Join(dir, "state.db")), ":1: no listener is configured: "},
		{"empty listen block", "defaults:\n  level: may\nlisten:\n  socket_mode: \"0660\"\n" + state(filepath.Join(dir, "state.db")),
			":4: no listener is configured: "},
		{"state under a regular file", listen + state(filepath.Join(regular, "state.db")),
			":4: state.path: " + filepath.Join(regular, "state.db") + " cannot be created: " + regular + " is not a directory ("},
		{"state is a directory", listen + state(dir), ":4: state.path: " + dir + " is a directory ("},
		{"invalid key", listen + "defaults:\n  level: verifyy\n", ":4: defaults.level: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "rules.yaml")
			if err := os.WriteFile(file, []byte(tc.config), 0o644); err != nil {
				t.Fatal(err)
			}
			rs, err := LoadConfig(file)
			if tc.want == "" {
				if err != nil || rs == nil {
					t.Fatalf("LoadConfig = %v, want valid", err)
				}
				return
			}
			var errs rules.ConfigErrors
			if !errors.As(err, &errs) || !strings.HasPrefix(errs[0].Error(), file+tc.want) {
				t.Fatalf("LoadConfig =\n%v\nwant a first line starting %q", err, file+tc.want)
			}
		})
	}
	// The checks of state.path, once the parallel cases are done, created
	// nothing.
	t.Cleanup(func() {
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("%s holds %d entries after the checks, want only %s", dir, len(entries), regular)
		}
	})
}

func TestLoadConfigUnreadable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.yaml"), ": cannot read the configuration: no such file or directory (write it there, or name it with -config FILE)"},
		{dir, ": cannot read the configuration: is a directory (name the YAML file itself with -config FILE)"},
	} {
		if _, err := LoadConfig(tc.file); err == nil || err.Error() != tc.file+tc.want {
			t.Errorf("LoadConfig(%s) = %v\nwant %s%s", tc.file, err, tc.file, tc.want)
		}
	}
}

func TestCheckStatePath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	existing := filepath.Join(dir, "state.db")
	if err := os.WriteFile(existing, []byte("pins"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{existing, filepath.Join(dir, "new.db"), filepath.Join(dir, "a", "b", "state.db")} {
		if err := checkStatePath(path); err != nil {
			t.Errorf("checkStatePath(%s) = %v, want nil", path, err)
		}
	}
	if data, _ := os.ReadFile(existing); string(data) != "pins" {
		t.Errorf("the existing state file changed to %q", data)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%s holds %d entries after the checks, want only the existing file", dir, len(entries))
	}
	under := filepath.Join(existing, "sub", "state.db")
	if err := checkStatePath(under); err == nil || !strings.Contains(err.Error(), existing+" is not a directory") ||
		!strings.Contains(err.Error(), "set state.path to a file the user running tlspolicyd can write") {
		t.Errorf("checkStatePath(%s) = %v, want %s named as not a directory", under, err, existing)
	}
	if os.Geteuid() == 0 {
		return // root writes whatever the modes say
	}
	locked := filepath.Join(dir, "locked")
	if err := os.Mkdir(locked, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := checkStatePath(filepath.Join(locked, "state.db")); err == nil || !strings.Contains(err.Error(), locked+" is not writable by user ") {
		t.Errorf("state file in a read-only directory: %v", err)
	}
}

// TestReloadRefusesWhatServeRefuses: files that would not start the daemon
// are refused on reload and counted; the running rules stay.
func TestReloadRefusesWhatServeRefuses(t *testing.T) {
	t.Parallel()
	d, file := startDaemon(t, "destinations:\n  - {match: example.org, level: verify}\n")
	nc, err := net.Dial("tcp", d.Addr("socketmap").String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := bufio.NewReader(nc)
	const verify = "OK verify protocols=>=TLSv1.2"
	for _, tc := range []struct{ name, config, want string }{
		{"empty", "", file + ": the file is empty or holds only comments"},
		{"no listener", "destinations:\n  - {match: example.org, level: may}\n", file + ":1: no listener is configured"},
	} {
		if err := os.WriteFile(file, []byte(tc.config), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := d.Reload(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("reload of %s: %v, want %q", tc.name, err, tc.want)
		}
		if got := socketmapQuery(t, r, nc, "tlspolicy", "example.org"); got != verify {
			t.Errorf("after the refused reload of %s: %q, want %q", tc.name, got, verify)
		}
	}
	_, body := httpGet(t, "http://"+d.Addr("http").String()+"/metrics")
	for _, want := range []string{`tlspolicyd_config_reloads_total{result="failure"} 2`, `tlspolicyd_config_reloads_total{result="success"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestReloadNamesRestartOnlySettings: a reload applies the rules and names
// each setting that only a restart applies, compared with what the daemon
// started with, so the warning repeats until the restart.
func TestReloadNamesRestartOnlySettings(t *testing.T) {
	t.Parallel()
	var log testlog.Buffer
	d, file := startDaemonLog(t, "destinations:\n  - {match: example.org, level: encrypt}\n", log.Logger())
	moved := filepath.Join(filepath.Dir(file), "moved.db")
	changed := "listen:\n  socketmap: 127.0.0.1:0\n  tcptable: 127.0.0.1:0\n  http: 127.0.0.1:0\n  policy: 127.0.0.1:0\n" +
		"state:\n  path: " + moved + "\nlog:\n  format: json\nprobe:\n  wait: 20s\n" +
		"destinations:\n  - {match: example.org, level: verify}\n"
	want := []string{
		"listen.policy changed: restart to apply",
		"state.path changed: restart to apply",
		"log.format changed: restart to apply",
		"probe.wait changed: restart to apply (lookups wait the new time already; the reply deadline of connections follows it after a restart)",
	}
	for i := range 2 {
		if err := os.WriteFile(file, []byte(changed), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := d.Reload(); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		var got []string
		for _, l := range strings.Split(log.String(), "\n") {
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "restart to apply") {
				_, msg, _ := strings.Cut(l, "msg=")
				msg, _, _ = strings.Cut(msg, " config=")
				got = append(got, strings.Trim(msg, `"`))
			}
		}
		if all := slices.Concat(slices.Repeat([][]string{want}, i+1)...); !slices.Equal(got, all) {
			t.Errorf("after reload %d the warnings are\n%s\nwant\n%s", i+1, strings.Join(got, "\n"), strings.Join(all, "\n"))
		}
	}
	if got := d.Engine.Rules().Rules[0].Level.String(); got != "verify" {
		t.Errorf("the rules were not applied: example.org is %s", got)
	}
	if _, err := os.Stat(moved); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a reload opened the new state.path %s: %v", moved, err)
	}
}
