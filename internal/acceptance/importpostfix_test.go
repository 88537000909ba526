package acceptance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// importTable is a Postfix TLS policy table as a site might keep it:
// partners by domain and subdomain, a relay by next hop, exceptions, and
// lines the daemon cannot carry over as they are.
const importTable = `# TLS policy for partners; postmap hash:/etc/postfix/tls_policy
.bank.example            encrypt
bank.example             secure match=nexthop:dot-nexthop
.eu.bank.example         verify protocols=>=TLSv1.2
[relay.example.net]:587  verify
legacy.example           may
broken.example           none
# kept from an older policy
BANK.example             encrypt
pinned.example           fingerprint
    match=3D:95:34:51:24:66:33:B9:D2:40:99:C0:C1:17:0B:D1
old.example              MUST
`

// TestImportPostfix runs tlspolicyd import-postfix on a table, puts its
// output in place of the destinations of the shipped rules.yaml as the
// README says, and checks that tlspolicyd check accepts the result. Then
// the daemon serves the imported rules, and for each destination it
// answers the level that Postfix's own table gave: the real postmap looks
// the key up in the hash: table built from the same file, walking up the
// .parent keys as smtp(8) does, with smtp_tls_security_level (may) when
// nothing matches. The lines the command reports as not carried over are
// left out of that comparison.
func TestImportPostfix(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	table := filepath.Join(dir, "tls_policy")
	if err := os.WriteFile(table, []byte(importTable), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, daemonBin, "import-postfix", table)
	cmd.Env = daemonEnv
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	checkRaces(t, "tlspolicyd import-postfix", stderr.String())
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("import-postfix: exit %d (%v), want 1 (lines not carried over)\n%s", code, err, stderr.String())
	}
	for _, want := range []string{
		table + ":3: bank.example: not carried over: match=nexthop:dot-nexthop: ",
		table + ":9: skipped: duplicate key \"BANK.example\": line 3 has it already",
		table + ":10: pinned.example: not carried over: level fingerprint: ",
		table + ":12: skipped: \"old.example\": unknown security level \"MUST\"",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	imported := stdout.String()

	// In place of the shipped destinations, as an administrator would.
	shipped, err := os.ReadFile(filepath.Join("..", "..", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config := string(shipped)
	if strings.Count(config, "\ndestinations: []\n") != 1 {
		t.Fatal("the shipped rules.yaml no longer has the line \"destinations: []\" that the import replaces")
	}
	config = strings.Replace(config, "\ndestinations: []\n", "\n"+imported, 1)
	config = regexp.MustCompile(`(?m)^  path: .*$`).ReplaceAllString(config, "  path: "+filepath.Join(dir, "state.db"))
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := runCLI(t, dir, "check", "-config", path); code != 0 || !strings.Contains(out, "valid (7 destination rules") {
		t.Fatalf("check of the shipped rules.yaml with the imported destinations: exit %d\n%s\n%s", code, out, config)
	}

	// What the daemon answers against what Postfix's table answered.
	d := startDaemon(t, listenInet+hermetic+"defaults:\n  level: may\n  upgrade: none\n"+imported)
	if out, err := exec.Command(postmapBin, "-c", postfixConf, "hash:"+table).CombinedOutput(); err != nil {
		t.Fatalf("postmap hash:%s: %v\n%s", table, err, out)
	}
	for _, dest := range []string{
		"bank.example", "www.bank.example", "eu.bank.example", "mx.eu.bank.example", "[relay.example.net]:587",
		"legacy.example", "broken.example", "other.example", "BANK.example",
	} {
		postfix := postfixPolicyLevel(t, "hash:"+table, dest)
		out, exit, stderr := postmap(t, dest, d.socketmap(t, "tlspolicy"))
		if exit != 0 {
			t.Errorf("%s: the daemon gave no answer (exit %d): %s", dest, exit, stderr)
			continue
		}
		if got, _, _ := strings.Cut(out, " "); got != postfix {
			t.Errorf("%s: the daemon answers %q, Postfix's table gave %s", dest, out, postfix)
		}
	}
}

// postfixPolicyLevel is the security level smtp(8) takes from a policy
// table for a next hop: the key itself, then for a domain each ".parent"
// from the nearest, then smtp_tls_security_level (may) if none is found.
func postfixPolicyLevel(t *testing.T, table, dest string) string {
	t.Helper()
	keys := []string{dest}
	if !strings.ContainsAny(dest, "[]:") {
		for rest := dest; strings.Contains(rest, "."); {
			_, rest, _ = strings.Cut(rest, ".")
			keys = append(keys, "."+rest)
		}
	}
	for _, k := range keys {
		out, exit, stderr := postmap(t, k, table)
		switch exit {
		case 0:
			level, _, _ := strings.Cut(out, " ")
			return level
		case 1:
		default:
			t.Fatalf("postmap -q %s %s: exit %d: %s", k, table, exit, stderr)
		}
	}
	return "may"
}
