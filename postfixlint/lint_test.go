package postfixlint

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// These tests build real Postfix configuration directories and read them
// with the installed postconf and postmap, as `check -postfix` does; like
// the acceptance tests, they fail without Postfix (.ci/install-deps).

// baseMain is the main.cf every case starts from: the daemon wired as
// contrib/postfix's main.cf and main-classes.cf wire it, without sender
// classes.
var baseMain = map[string]string{
	"compatibility_level":                     "3.6",
	"smtp_tls_security_level":                 "may",
	"smtp_tls_policy_maps":                    "socketmap:inet:127.0.0.1:10028:tlspolicy",
	"transport_maps":                          "socketmap:inet:127.0.0.1:10028:transport",
	"sender_dependent_default_transport_maps": "socketmap:inet:127.0.0.1:10028:sender.transport",
}

// baseMaster holds the stock delivery services the cases route to.
const baseMaster = `smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
`

// phiTransport is contrib/postfix/master-classes.cf's class transport.
const phiTransport = `smtp-phi  unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/$service_name
  -o smtp_tls_security_level=encrypt
  -o smtp_tls_policy_maps=socketmap:inet:127.0.0.1:10028:phi
`

// phiClass is a sender class for the rules.
const phiClass = `classes:
  - name: phi
    senders: ["@clinic.example.org"]
    level: verify
`

// baseRules starts every rules file; @VERSION@ is the installed Postfix.
const baseRules = `listen:
  socketmap: 127.0.0.1:10028
  tcptable: 127.0.0.1:10029
postfix_version: "@VERSION@"
`

// lintCase is one Postfix directory and rules file, and the findings
// they must give.
type lintCase struct {
	name   string
	main   map[string]string // over baseMain; "" removes a parameter
	master string            // appended to baseMaster
	files  map[string]string // written into the directory
	hash   []string          // files to build with postmap (hash:)
	drop   []string          // files removed after postmap
	touch  []string          // files dated after their database
	rules  string            // appended to baseRules
	// listen replaces baseRules' listen block, if set.
	listen string
	want   []want
}

// want is one finding: the text on the rules line it names ("" for the
// file as a whole) and substrings of its message.
type want struct {
	at  string
	has []string
}

func TestLint(t *testing.T) {
	t.Parallel()
	version := installedVersion(t)
	older := "3.5"
	tests := []lintCase{
		{
			name:  "transport entry to a host and port",
			main:  map[string]string{"transport_maps": "hash:@DIR@/transport, socketmap:inet:127.0.0.1:10028:transport"},
			files: map[string]string{"transport": "# routes\nnotls.test smtp:[127.0.0.1]:2525\n"},
			hash:  []string{"transport"},
			rules: "destinations:\n  - match: notls.test\n    level: encrypt\n",
			want: []want{{"match: notls.test", []string{
				`never applies to mail for notls.test`, `"notls.test smtp:[127.0.0.1]:2525" at @DIR@/transport:2`,
				`asks the policy map for "[127.0.0.1]:2525"`, "may leave in plaintext",
				`add a destination rule for the next hop: match: "[127.0.0.1]:2525", level: encrypt`}}},
		},
		{
			name:  "transport entry covered by a rule for the next hop",
			main:  map[string]string{"transport_maps": "hash:@DIR@/transport"},
			files: map[string]string{"transport": "notls.test smtp:[127.0.0.1]:2525\n"},
			hash:  []string{"transport"},
			rules: "destinations:\n  - match: notls.test\n    level: encrypt\n  - match: \"[127.0.0.1]:2525\"\n    level: verify\n",
		},
		{
			name:  "transport entry for subdomains",
			main:  map[string]string{"transport_maps": "hash:@DIR@/transport"},
			files: map[string]string{"transport": ".sub.example smtp:mx.example.net\na.example.org smtp:[gw.example.org]\n"},
			hash:  []string{"transport"},
			rules: "destinations:\n  - match: .sub.example\n    level: verify\n  - match: .example.org\n    level: encrypt\n",
			want: []want{
				{"match: .sub.example", []string{"for the subdomains of sub.example", "match: mx.example.net, level: verify"}},
				{"match: .example.org", []string{"for a.example.org", `match: "[gw.example.org]", level: encrypt`}},
			},
		},
		{
			name: "wildcard and null and non-SMTP transport entries",
			main: map[string]string{"transport_maps": "hash:@DIR@/transport"},
			files: map[string]string{"transport": "c.test :\nd.test relay:\ne.test error:5.1.1 gone\nf.test lmtp:unix:private/dovecot\n" +
				"* smtp:[outbound.example]:25\n"},
			hash: []string{"transport"},
			rules: "destinations:\n" +
				"  - match: a.test\n    level: encrypt\n" +
				"  - match: c.test\n    level: encrypt\n" +
				"  - match: d.test\n    level: encrypt\n" +
				"  - match: e.test\n    level: encrypt\n" +
				"  - match: f.test\n    level: encrypt\n",
			want: []want{
				{"match: a.test", []string{`the transport_maps entry "* smtp:[outbound.example]:25"`, `match: "[outbound.example]:25", level: encrypt`}},
			},
		},
		{
			name:  "a next hop the daemon cannot parse",
			main:  map[string]string{"transport_maps": "hash:@DIR@/transport"},
			files: map[string]string{"transport": "g.test smtp:[mx.g.test]:submission\n"},
			hash:  []string{"transport"},
			rules: "destinations:\n  - match: g.test\n    level: encrypt\n",
			want:  []want{{"match: g.test", []string{`"[mx.g.test]:submission", which the daemon refuses`, "numeric port"}}},
		},
		{
			name:  "hash table without its source is asked with postmap",
			main:  map[string]string{"transport_maps": "hash:@DIR@/transport"},
			files: map[string]string{"transport": "notls.test smtp:[127.0.0.1]:2525\n"},
			hash:  []string{"transport"},
			drop:  []string{"transport"},
			rules: "destinations:\n  - match: notls.test\n    level: encrypt\n",
			want:  []want{{"match: notls.test", []string{`transport_maps hash:@DIR@/transport, which answers "smtp:[127.0.0.1]:2525" for notls.test,`, `match: "[127.0.0.1]:2525"`}}},
		},
		{
			name:  "regexp transport table",
			main:  map[string]string{"transport_maps": "regexp:@DIR@/transport.re"},
			files: map[string]string{"transport.re": "/@notls\\.test$/ smtp:[127.0.0.1]:2525\n"},
			rules: "destinations:\n  - match: notls.test\n    level: encrypt\n",
			want:  []want{{"match: notls.test", []string{"for postmaster@notls.test", `match: "[127.0.0.1]:2525"`}}},
		},
		{
			name: "parent_domain_matches_subdomains lists transport_maps",
			main: map[string]string{"transport_maps": "hash:@DIR@/transport",
				"parent_domain_matches_subdomains": "debug_peer_list, transport_maps"},
			files: map[string]string{"transport": "example.net smtp:[gw.example.net]\n"},
			hash:  []string{"transport"},
			rules: "destinations:\n  - match: .example.net\n    level: encrypt\n",
			want:  []want{{"match: .example.net", []string{"for the subdomains of example.net", `match: "[gw.example.net]"`}}},
		},
		{
			name: "relayhost",
			main: map[string]string{"relayhost": "[relay.example]:587"},
			rules: "destinations:\n" +
				"  - match: a.test\n    level: encrypt\n" +
				"  - match: b.test\n    level: verify\n" +
				"  - match: \"[relay.example]:587\"\n    level: encrypt\n",
			want: []want{{"match: b.test", []string{"relayhost = [relay.example]:587 in @DIR@/main.cf",
				`gets encrypt from @RULES@:`, `raise @RULES@:`, `to level: verify`}}},
		},
		{
			name:  "default_transport with a next hop",
			main:  map[string]string{"default_transport": "smtp:[smart.example]"},
			rules: "destinations:\n  - match: a.test\n    level: encrypt\n",
			want:  []want{{"match: a.test", []string{"default_transport = smtp:[smart.example]", `match: "[smart.example]", level: encrypt`}}},
		},
		{
			name:  "sender-dependent relayhost",
			main:  map[string]string{"sender_dependent_relayhost_maps": "hash:@DIR@/sdrh"},
			files: map[string]string{"sdrh": "@law.example [lawrelay.example]:25\n@quiet.example DUNNO\n"},
			hash:  []string{"sdrh"},
			rules: "destinations:\n  - match: a.test\n    level: encrypt\n",
			want: []want{{"match: a.test", []string{"does not apply to mail from @law.example for a.test",
				"@DIR@/sdrh:1", `match: "[lawrelay.example]:25", level: encrypt`}}},
		},
		{
			name:  "hash table source changed after postmap",
			main:  map[string]string{"transport_maps": "hash:@DIR@/transport, hash:@DIR@/never"},
			files: map[string]string{"transport": "a.test smtp:\n", "never": "b.test smtp:\n"},
			hash:  []string{"transport"},
			touch: []string{"transport"},
			want: []want{
				{"", []string{"@DIR@/transport (@DIR@/main.cf transport_maps) was changed after its database @DIR@/transport.db was built", "run postmap hash:@DIR@/transport"}},
				{"", []string{"@DIR@/never (@DIR@/main.cf transport_maps) has no database @DIR@/never.db"}},
			},
		},
		{
			name: "empty smtp_tls_policy_maps",
			main: map[string]string{"smtp_tls_policy_maps": ""},
			want: []want{{"socketmap: 127.0.0.1:10028", []string{"smtp_tls_policy_maps is empty", "socketmap:inet:127.0.0.1:10028:tlspolicy"}}},
		},
		{
			name: "policy map at another port",
			main: map[string]string{"smtp_tls_policy_maps": "socketmap:inet:127.0.0.1:10027:tlspolicy"},
			want: []want{{"socketmap: 127.0.0.1:10028", []string{"lists socketmap:inet:127.0.0.1:10027:tlspolicy, but the daemon listens on listen.socketmap 127.0.0.1:10028"}}},
		},
		{
			name: "policy map by another name of the same address and tcp_table",
			main: map[string]string{"smtp_tls_policy_maps": "socketmap:inet:localhost:10028:tlspolicy, tcp:127.0.0.1:10029"},
		},
		{
			name: "policy map naming the transport map",
			main: map[string]string{"smtp_tls_policy_maps": "socketmap:inet:127.0.0.1:10028:transport"},
			want: []want{{"socketmap: 127.0.0.1:10028", []string{"answers routes, not TLS policies"}}},
		},
		{
			name: "policy map naming no map of the daemon",
			main: map[string]string{"smtp_tls_policy_maps": "socketmap:inet:127.0.0.1:10028:tlspolicies"},
			want: []want{{"socketmap: 127.0.0.1:10028", []string{`the daemon has no map "tlspolicies"`}}},
		},
		{
			name:  "policy map not pointing at the daemon",
			main:  map[string]string{"smtp_tls_policy_maps": "hash:@DIR@/tls"},
			files: map[string]string{"tls": "notls.test encrypt\n"},
			hash:  []string{"tls"},
			want:  []want{{"socketmap: 127.0.0.1:10028", []string{"does not name the daemon", "write socketmap:inet:127.0.0.1:10028:tlspolicy first"}}},
		},
		{
			name: "policy map on a unix socket in the queue directory",
			main: map[string]string{"smtp_tls_policy_maps": "socketmap:unix:private/tlspolicyd:tlspolicy", "queue_directory": "/var/spool/postfix",
				"transport_maps": "socketmap:unix:/var/spool/postfix/private/tlspolicyd:transport",
				"sender_dependent_default_transport_maps": "socketmap:unix:private/tlspolicyd:sender.transport"},
			listen: "listen:\n  socketmap: unix:/var/spool/postfix/private/tlspolicyd\n",
		},
		{
			name:  "tables before and after the daemon's",
			main:  map[string]string{"smtp_tls_policy_maps": "hash:@DIR@/tls, socketmap:inet:127.0.0.1:10028:tlspolicy, texthash:@DIR@/after"},
			files: map[string]string{"tls": "notls.test may\nother.test none\n.parent.test encrypt\n", "after": "x.test encrypt\n"},
			hash:  []string{"tls"},
			rules: "destinations:\n  - match: notls.test\n    level: encrypt\n",
			want: []want{
				{"match: notls.test", []string{"never applies to notls.test: @DIR@/tls:1", `answers it first with "may"`}},
				{"destinations:", []string{"answers 1 next hop(s) itself: other.test (@DIR@/tls:2)", "match: other.test, level: none, upgrade: none"}},
				{"destinations:", []string{"lists texthash:@DIR@/after after the daemon's map", "Postfix never uses"}},
			},
		},
		{
			name:  "a regexp table before the daemon's",
			main:  map[string]string{"smtp_tls_policy_maps": "regexp:@DIR@/tls.re, socketmap:inet:127.0.0.1:10028:tlspolicy"},
			files: map[string]string{"tls.re": "/^notls\\.test$/ may\n"},
			rules: "destinations:\n  - match: notls.test\n    level: encrypt\n  - match: other.test\n    level: encrypt\n",
			want: []want{
				{"match: notls.test", []string{"regexp:@DIR@/tls.re", `answers notls.test first with "may"`}},
				{"destinations:", []string{"tlspolicyd cannot list its entries (a regexp table)"}},
			},
		},
		{
			name:   "an smtp transport with its own policy map",
			master: "relay unix - - n - - smtp\n  -o smtp_tls_policy_maps=hash:@DIR@/tls\n",
			files:  map[string]string{"tls": "x.test encrypt\n"},
			hash:   []string{"tls"},
			want:   []want{{"socketmap: 127.0.0.1:10028", []string{"@DIR@/master.cf relay -o smtp_tls_policy_maps (hash:@DIR@/tls) does not name the daemon"}}},
		},
		{
			name:   "class wired as contrib does",
			master: phiTransport,
			rules:  phiClass,
		},
		{
			name:  "class without its transport",
			rules: phiClass,
			want: []want{{"name: phi", []string{"class phi has no transport", "no smtp-phi service",
				"smtp-phi unix - - - - - smtp -o smtp_tls_policy_maps=socketmap:inet:127.0.0.1:10028:phi"}}},
		},
		{
			name:   "class transport without a policy map of its own",
			master: "smtp-phi unix - - n - - smtp\n",
			rules:  phiClass,
			want:   []want{{"name: phi", []string{"has no -o smtp_tls_policy_maps", "add -o smtp_tls_policy_maps=socketmap:inet:127.0.0.1:10028:phi"}}},
		},
		{
			name:   "class transport asking the default map",
			master: "smtp-phi unix - - n - - smtp\n  -o smtp_tls_policy_maps=socketmap:inet:127.0.0.1:10028:tlspolicy\n",
			rules:  phiClass,
			want:   []want{{"name: phi", []string{"the default class's map", "not the class level verify"}}},
		},
		{
			name:   "class transport that is no smtp client",
			master: "smtp-phi unix - - n - - lmtp\n",
			rules:  phiClass,
			want:   []want{{"name: phi", []string{"runs lmtp, not the smtp(8) client"}}},
		},
		{
			name:   "class mail never routed to its transport",
			main:   map[string]string{"sender_dependent_default_transport_maps": ""},
			master: phiTransport,
			rules:  phiClass,
			want:   []want{{"name: phi", []string{"never routed to its transport smtp-phi", "sender_dependent_default_transport_maps = socketmap:inet:127.0.0.1:10028:sender.transport"}}},
		},
		{
			name:   "class mail routed through another transport",
			main:   map[string]string{"transport_maps": "hash:@DIR@/transport, socketmap:inet:127.0.0.1:10028:transport"},
			files:  map[string]string{"transport": "partner.test smtp:[gw.partner.test]\nok.test smtp-phi:[gw.ok.test]\n"},
			hash:   []string{"transport"},
			master: phiTransport,
			rules:  phiClass,
			want: []want{{"name: phi", []string{"mail of class phi for partner.test leaves through smtp, not through smtp-phi",
				"@DIR@/transport:1", "route it through the class transport (smtp-phi:[gw.partner.test])"}}},
		},
		{
			name:  "postfix_version older than the installed Postfix",
			rules: "postfix_version: \"" + older + "\"\n",
			want:  []want{{`postfix_version: "` + older, []string{"protocols=!SSLv2:!SSLv3", "instead of protocols=>=TLSv1.2", `set postfix_version: "` + version + `"`}}},
		},
		{
			name:  "fallback route without the daemon's transport map",
			main:  map[string]string{"transport_maps": ""},
			rules: "destinations:\n  - match: a.test\n    level: verify\n    fallback: \"smtp:[gw.example]:2525\"\n  - match: \"[gw.example]:2525\"\n    level: verify\n",
			want:  []want{{"match: a.test", []string{`the fallback route "smtp:[gw.example]:2525"`, "add socketmap:inet:127.0.0.1:10028:transport to transport_maps"}}},
		},
		{
			name: "the daemon's policy map in transport_maps",
			main: map[string]string{"transport_maps": "socketmap:inet:127.0.0.1:10028:tlspolicy"},
			want: []want{{"socketmap: 127.0.0.1:10028", []string{"the daemon's tlspolicy map, which does not answer transport_maps lookups", "write socketmap:inet:127.0.0.1:10028:transport"}}},
		},
	}
	if !strings.HasPrefix(version, "3.1") { // before 3.10: the TLSRPT attributes
		tests = append(tests, lintCase{
			name:  "postfix_version newer than the installed Postfix",
			rules: "postfix_version: \"3.10\"\n",
			want:  []want{{`postfix_version: "3.10"`, []string{"TLSRPT attributes", "cannot parse", "defers that mail", `set postfix_version: "` + version + `"`}}},
		})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, version)
		})
	}
}

// TestLintContrib: the shipped contrib/postfix files, with the stock
// services, and rules that listen where they point, give no finding.
func TestLintContrib(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	contrib := func(name string) string {
		data, err := os.ReadFile(filepath.Join("..", "contrib", "postfix", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	// Both sets, as a site with classes merges them: main-classes.cf asks
	// the site to add its recipient check to smtpd_recipient_restrictions.
	mainCF := contrib("main.cf") + "\n" + contrib("main-classes.cf") +
		"\nsmtpd_recipient_restrictions = $tlspolicyd_recipient_check\n"
	masterCF := contrib("master-classes.cf")
	writeFile(t, filepath.Join(dir, "main.cf"), mainCF)
	writeFile(t, filepath.Join(dir, "master.cf"), baseMaster+string(masterCF))
	rulesFile := filepath.Join(dir, "rules.yaml")
	writeFile(t, rulesFile, strings.ReplaceAll(baseRules, "@VERSION@", installedVersion(t))+phiClass+
		"destinations:\n  - match: example.org\n    level: verify\n    on_fail: fallback\n    fallback: \"smtp-phi:[gateway.example.org]:2525\"\n")
	findings := lint(t, dir, rulesFile)
	for _, f := range findings {
		t.Errorf("unexpected finding: %s", f)
	}
}

// TestReadFails: a directory without main.cf cannot be read, and the
// error says what postconf said.
func TestReadFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := Read(context.Background(), dir, Tools{})
	if err == nil || !strings.Contains(err.Error(), "main.cf") {
		t.Errorf("Read(%s without main.cf) = %v, want an error naming main.cf", dir, err)
	}
}

// TestRead: parameters are expanded, master.cf services and their -o
// overrides read, table sources parsed.
func TestRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "main.cf"), "compatibility_level = 3.6\n"+
		"transport_maps = hash:$config_directory/transport\n"+
		"relayhost = [relay.example]:587\n")
	writeFile(t, filepath.Join(dir, "master.cf"), baseMaster+
		"smtp-phi unix - - n - - smtp\n  -o { smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10028:phi, hash:$config_directory/tls }\n")
	writeFile(t, filepath.Join(dir, "transport"), "a.test smtp:[b.test]\n")
	pf, err := Read(context.Background(), dir, Tools{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pf.TransportMaps) != 1 || pf.TransportMaps[0].Spec != "hash:"+dir+"/transport" ||
		len(pf.TransportMaps[0].Entries) != 1 || pf.TransportMaps[0].Entries[0].Value != "smtp:[b.test]" {
		t.Errorf("transport_maps: %+v", pf.TransportMaps)
	}
	if pf.Relayhost != "[relay.example]:587" {
		t.Errorf("relayhost %q", pf.Relayhost)
	}
	s := pf.Service("smtp-phi")
	if s == nil || s.Command != "smtp" || !s.PolicyMapsSet || specList(s.PolicyMaps) != "socketmap:inet:127.0.0.1:10028:phi, hash:"+dir+"/tls" {
		t.Errorf("smtp-phi: %+v", s)
	}
	if s := pf.Service("smtp"); s == nil || s.PolicyMapsSet {
		t.Errorf("smtp: %+v", s)
	}
	if pf.MailVersion == "" || pf.Version.Major < 2 {
		t.Errorf("mail_version %q, version %v", pf.MailVersion, pf.Version)
	}
}

// run builds the case's directories and checks the findings.
func (tc lintCase) run(t *testing.T, version string) {
	dir := t.TempDir()
	rep := strings.NewReplacer("@DIR@", dir, "@VERSION@", version)
	params := map[string]string{}
	for k, v := range baseMain {
		params[k] = v
	}
	for k, v := range tc.main {
		params[k] = v
	}
	var names []string
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	var mainCF strings.Builder
	for _, k := range names {
		mainCF.WriteString(k + " = " + rep.Replace(params[k]) + "\n")
	}
	writeFile(t, filepath.Join(dir, "main.cf"), mainCF.String())
	writeFile(t, filepath.Join(dir, "master.cf"), baseMaster+rep.Replace(tc.master))
	for name, text := range tc.files {
		writeFile(t, filepath.Join(dir, name), text)
	}
	for _, name := range tc.hash {
		postmapBuild(t, dir, "hash:"+filepath.Join(dir, name))
	}
	for _, name := range tc.touch {
		future := time.Now().Add(time.Minute)
		if err := os.Chtimes(filepath.Join(dir, name), future, future); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range tc.drop {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	rulesText := rep.Replace(baseRules)
	if tc.listen != "" {
		_, rest, _ := strings.Cut(rulesText, "postfix_version")
		rulesText = tc.listen + "postfix_version" + rest
	}
	if strings.Contains(tc.rules, "postfix_version") {
		rulesText = strings.Split(rulesText, "postfix_version")[0]
	}
	rulesText += rep.Replace(tc.rules)
	rulesFile := filepath.Join(dir, "rules.yaml")
	writeFile(t, rulesFile, rulesText)
	findings := lint(t, dir, rulesFile)

	rep = strings.NewReplacer("@DIR@", dir, "@RULES@", rulesFile)
	left := append([]Finding(nil), findings...)
	for _, w := range tc.want {
		line := 0
		if w.at != "" {
			line = lineOf(t, rulesText, w.at)
		}
		found := -1
		for i, f := range left {
			if f.Line == line && f.File == rulesFile && containsAll(f.Msg, w.has, rep) {
				found = i
				break
			}
		}
		if found < 0 {
			t.Errorf("no finding at %s:%d with %q", rulesFile, line, w.has)
			continue
		}
		left = append(left[:found], left[found+1:]...)
	}
	for _, f := range left {
		t.Errorf("unexpected finding: %s", f)
	}
	if t.Failed() {
		t.Logf("rules.yaml:\n%s", rulesText)
		for _, f := range findings {
			t.Logf("got %s", f)
		}
	}
	for _, f := range findings {
		if !strings.HasPrefix(f.String(), "warning: "+rulesFile) {
			t.Errorf("finding %q does not start with warning: and the rules file", f)
		}
	}
}

func containsAll(s string, subs []string, rep *strings.Replacer) bool {
	for _, sub := range subs {
		if !strings.Contains(s, rep.Replace(sub)) {
			return false
		}
	}
	return true
}

func lint(t *testing.T, dir, rulesFile string) []Finding {
	t.Helper()
	rs, err := rules.LoadFile(rulesFile)
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	pf, err := Read(context.Background(), dir, Tools{})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return Lint(context.Background(), rs, pf)
}

// installedVersion is the installed Postfix's major.minor.
func installedVersion(t *testing.T) string {
	t.Helper()
	postconf, err := findTool("", "postconf")
	if err != nil {
		t.Fatalf("%v; run .ci/install-deps", err)
	}
	out, err := exec.Command(postconf, "-d", "-h", "mail_version").Output()
	if err != nil {
		t.Fatalf("postconf -d -h mail_version: %v", err)
	}
	v, err := majorMinor(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return v.String()
}

func postmapBuild(t *testing.T, dir, table string) {
	t.Helper()
	postmap, err := findTool("", "postmap")
	if err != nil {
		t.Fatalf("%v; run .ci/install-deps", err)
	}
	if out, err := exec.Command(postmap, "-c", dir, table).CombinedOutput(); err != nil {
		t.Fatalf("postmap %s: %v\n%s", table, err, out)
	}
}

// writeFile writes a file dated a minute ago: Postfix waits for a
// configuration file changed within the last second to settle (about 2 s),
// which a fresh file would cost every postconf run.
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Minute)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
}

// lineOf is the 1-based number of the first line of text containing s.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%q not in the rules", s)
	return 0
}
