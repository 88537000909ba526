package acceptance

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// `tlspolicyd check -postfix DIR` against real Postfix configuration
// directories: the shipped contrib/postfix files adapted to the test's
// addresses, changed with postconf -e as a postmaster would, tables built
// with postmap, and the stock master.cf.

// pfConf is one Postfix configuration directory for check -postfix.
type pfConf struct {
	dir       string // the configuration directory
	socketmap string // the daemon's socketmap address the files name
	policy    string // its policy delegation address
}

// newPFConf writes contrib/postfix's main.cf and main-classes.cf (with the
// recipient check a site adds to its own list) and the stock master.cf with
// contrib/postfix/master-classes.cf's class transports (unless
// classTransports is false) into a new directory, with the daemon's
// addresses replaced by socketmap and policy.
func newPFConf(t *testing.T, socketmap, policy string, classTransports bool) *pfConf {
	t.Helper()
	p := &pfConf{dir: filepath.Join(t.TempDir(), "postfix"), socketmap: socketmap, policy: policy}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	adapt := strings.NewReplacer("127.0.0.1:10028", socketmap, "127.0.0.1:10030", policy)
	mainCF := readRepoFile(t, "contrib/postfix/main.cf") + "\n" + readRepoFile(t, "contrib/postfix/main-classes.cf") +
		"\n" + contribRecipientCheck + "\n"
	stock, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatalf("the stock master.cf: %v", err)
	}
	masterCF := string(stock)
	if classTransports {
		masterCF += "\n" + readRepoFile(t, "contrib/postfix/master-classes.cf")
	}
	p.write(t, "main.cf", adapt.Replace(mainCF))
	p.write(t, "master.cf", adapt.Replace(masterCF))
	return p
}

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// write writes a file into the directory, dated a minute ago: Postfix
// programs wait about 2 s for a main.cf changed within the last second to
// settle.
func (p *pfConf) write(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p.age(t, path)
	return path
}

func (p *pfConf) age(t *testing.T, path string) {
	t.Helper()
	past := time.Now().Add(-time.Minute)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
}

// set changes main.cf with postconf -e, as a postmaster would.
func (p *pfConf) set(t *testing.T, settings ...string) {
	t.Helper()
	args := append([]string{"-c", p.dir, "-e"}, settings...)
	if out, err := exec.Command(postconfBin(t), args...).CombinedOutput(); err != nil {
		t.Fatalf("postconf %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	p.age(t, filepath.Join(p.dir, "main.cf"))
}

// table writes a lookup table's source and builds it with postmap; it
// returns the table as main.cf names it.
func (p *pfConf) table(t *testing.T, name, text string) string {
	t.Helper()
	path := p.write(t, name, text)
	table := "hash:" + path
	if out, err := exec.Command(postmapBin, "-c", p.dir, table).CombinedOutput(); err != nil {
		t.Fatalf("postmap %s: %v\n%s", table, err, out)
	}
	return table
}

// postconfBin is Postfix's postconf, next to postmap.
func postconfBin(t *testing.T) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(postmapBin), "postconf")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("postconf (Postfix) not found next to %s: run .ci/install-deps", postmapBin)
	}
	return p
}

// installedPostfix is the installed Postfix's release, major.minor.
func installedPostfix(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(postconfBin(t), "-d", "-h", "mail_version").Output()
	if err != nil {
		t.Fatalf("postconf -d -h mail_version: %v", err)
	}
	m := regexp.MustCompile(`^\d+\.\d+`).FindString(strings.TrimSpace(string(out)))
	if m == "" {
		t.Fatalf("mail_version %q", out)
	}
	return m
}

// checkPostfix runs check -postfix; it must exit 0 and end with the
// summary line. It returns the warning lines and the whole output.
func checkPostfix(t *testing.T, config, dir string) ([]string, string) {
	t.Helper()
	code, out := runCLI(t, filepath.Dir(config), "check", "-config", config, "-postfix", dir)
	if code != 0 {
		t.Fatalf("check -postfix: exit %d, want 0 (warnings leave it 0); output:\n%s", code, out)
	}
	var warnings []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "warning: ") {
			warnings = append(warnings, l)
		}
	}
	summary := fmt.Sprintf("%s: Postfix ", dir)
	if !strings.Contains(out, summary) || !strings.Contains(out, fmt.Sprintf(": %d warning", len(warnings))) {
		t.Errorf("check -postfix: no summary line %q ... %d warning(s); output:\n%s", summary, len(warnings), out)
	}
	return warnings, out
}

// TestCheckPostfixTransport is the trap of the issue: a rule for a
// domain that transport_maps routes to [127.0.0.1]:2525. Postfix asks the
// daemon for "[127.0.0.1]:2525", which gets the default floor while query
// says encrypt for the domain. check -postfix names both sides and the
// key to write; with that rule written the warning goes, and the daemon
// answers the next hop at the rule's level.
func TestCheckPostfixTransport(t *testing.T) {
	t.Parallel()
	rules := "postfix_version: \"" + installedPostfix(t) + "\"\n" +
		"defaults:\n  level: may\n  upgrade: none\n" +
		"destinations:\n  - match: notls.test\n    level: encrypt\n"
	config := listenInet + "  policy: @POLICY@\n" + hermetic + rules
	d := startDaemon(t, config)
	pf := newPFConf(t, d.listen["socketmap"], d.listen["policy"], false)
	transport := pf.table(t, "transport", "# a test gateway\nnotls.test smtp:[127.0.0.1]:2525\n")
	pf.set(t, "transport_maps = "+transport+", "+d.socketmap(t, "transport"))

	tlspolicy := d.socketmap(t, "tlspolicy")
	checkLookup(t, tlspolicy, lookup{key: "notls.test", want: encrypt}, "")
	checkLookup(t, tlspolicy, lookup{key: "[127.0.0.1]:2525", want: may}, "")

	warnings, out := checkPostfix(t, d.configPath, pf.dir)
	written := d.replacer.Replace(config)
	prefix := fmt.Sprintf("warning: %s:%d: ", d.configPath, lineOf(t, written, "match: notls.test"))
	if len(warnings) != 1 || !strings.HasPrefix(warnings[0], prefix) ||
		!strings.Contains(warnings[0], filepath.Join(pf.dir, "transport")+":2") ||
		!strings.Contains(warnings[0], `asks the policy map for "[127.0.0.1]:2525"`) ||
		!strings.Contains(warnings[0], `match: "[127.0.0.1]:2525", level: encrypt`) {
		t.Fatalf("check -postfix: want one warning starting %q, naming %s/transport:2 and the rule to write; output:\n%s", prefix, pf.dir, out)
	}

	// The rule it says to write.
	d.writeConfig(t, config+"  - match: \"[127.0.0.1]:2525\"\n    level: encrypt\n")
	d.reload(t)
	eventually(t, pollTimeout, "the reloaded rule answers the next hop", func() (bool, string) {
		got, code, _ := postmap(t, "[127.0.0.1]:2525", tlspolicy)
		return code == 0 && got == encrypt, got
	})
	if warnings, out := checkPostfix(t, d.configPath, pf.dir); len(warnings) != 0 {
		t.Errorf("check -postfix with the rule written: want no warning; output:\n%s", out)
	}
}

// TestCheckPostfix: each kind of trap in a real Postfix configuration
// gives a warning that names the rules line and the Postfix side; the
// shipped contrib files give none.
func TestCheckPostfix(t *testing.T) {
	t.Parallel()
	version := installedPostfix(t)
	older := "3.5" // protocols=>= needs 3.6: older answers differ from the installed release's
	const phi = "classes:\n  - name: phi\n    senders: [\"@clinic.example.org\"]\n    level: verify\n"
	tests := []struct {
		name string
		// rules follow the listen block; @VERSION@ is the installed
		// release.
		rules string
		// classTransports adds contrib's smtp-phi to master.cf.
		classTransports bool
		// setup changes the Postfix directory; conf is its path.
		setup func(t *testing.T, p *pfConf)
		// at is the text on the rules line the warning names; has are
		// parts of the warning (@CONF@: the Postfix directory).
		at  string
		has []string
	}{
		{
			name:  "relayhost",
			rules: "postfix_version: \"@VERSION@\"\ndestinations:\n  - match: partner.example\n    level: verify\n",
			setup: func(t *testing.T, p *pfConf) { p.set(t, "relayhost = [relay.example]:587") },
			at:    "match: partner.example",
			has: []string{"never applies to mail for partner.example", "relayhost = [relay.example]:587 in @CONF@/main.cf",
				`asks the policy map for "[relay.example]:587"`, `match: "[relay.example]:587", level: verify`},
		},
		{
			name:  "class without its transport",
			rules: "postfix_version: \"@VERSION@\"\n" + phi,
			at:    "- name: phi",
			has:   []string{"class phi has no transport", "@CONF@/master.cf has no smtp-phi service", "add to master.cf: smtp-phi unix", ":phi"},
		},
		{
			name:  "version mismatch",
			rules: "postfix_version: \"" + older + "\"\n",
			at:    "postfix_version:",
			has: []string{"postfix_version " + older + ", but the Postfix in @CONF@ is " + version, "mail_version",
				"protocols=!SSLv2:!SSLv3", "instead of protocols=>=TLSv1.2", `set postfix_version: "` + version + `"`},
		},
		{
			name:  "table before the daemon's",
			rules: "postfix_version: \"@VERSION@\"\ndestinations:\n  - match: notls.test\n    level: encrypt\n",
			setup: func(t *testing.T, p *pfConf) {
				table := p.table(t, "tls_policy", "notls.test may\n")
				p.set(t, "smtp_tls_policy_maps = "+table+", socketmap:inet:"+p.socketmap+":tlspolicy")
			},
			at: "match: notls.test",
			has: []string{"never applies to notls.test: @CONF@/tls_policy:1", "listed before the daemon's map socketmap:inet:",
				`answers it first with "may"`, "remove that entry"},
		},
		{
			name:            "contrib as shipped",
			classTransports: true,
			rules: "postfix_version: \"@VERSION@\"\n" + phi +
				"destinations:\n  - match: example.org\n    level: verify\n    on_fail: fallback\n    fallback: \"smtp-phi:[gateway.example.org]:2525\"\n" +
				"  - match: .example.org\n    level: encrypt\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ports := freePorts(t, 4)
			text := strings.NewReplacer("@SOCKETMAP@", ports[0], "@TCPTABLE@", ports[1], "@HTTP@", ports[2], "@DNS@", ports[3],
				"@DIR@", dir, "@VERSION@", version).Replace(listenInet + hermetic + tc.rules)
			config := filepath.Join(dir, "rules.yaml")
			if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			pf := newPFConf(t, ports[0], "127.0.0.1:1", tc.classTransports)
			if tc.setup != nil {
				tc.setup(t, pf)
			}
			warnings, out := checkPostfix(t, config, pf.dir)
			if tc.at == "" {
				if len(warnings) != 0 {
					t.Errorf("check -postfix: want no warning; output:\n%s", out)
				}
				return
			}
			prefix := fmt.Sprintf("warning: %s:%d: ", config, lineOf(t, text, tc.at))
			rep := strings.NewReplacer("@CONF@", pf.dir)
			if len(warnings) != 1 || !strings.HasPrefix(warnings[0], prefix) || !containsEach(warnings[0], tc.has, rep) {
				t.Errorf("check -postfix: want one warning starting %q with %q; output:\n%s", prefix, tc.has, out)
			}
		})
	}
}

func containsEach(s string, subs []string, rep *strings.Replacer) bool {
	for _, sub := range subs {
		if !strings.Contains(s, rep.Replace(sub)) {
			return false
		}
	}
	return true
}

// TestCheckPostfixUnreadable: a directory postconf cannot read fails the
// command, saying so; the rules alone were valid.
func TestCheckPostfixUnreadable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := writeStatic(t, dir, listenInet+hermetic)
	missing := filepath.Join(dir, "no-postfix")
	code, out := runCLI(t, dir, "check", "-config", config, "-postfix", missing)
	if code != 1 || !strings.Contains(out, "cannot read the Postfix configuration in "+missing) || !strings.Contains(out, "main.cf") {
		t.Errorf("check -postfix %s: exit %d, want 1 and a message naming main.cf; output:\n%s", missing, code, out)
	}
}
