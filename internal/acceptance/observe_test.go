package acceptance

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// Seeing and proving decisions: the status page, the JSON API, the
// decision history, the report, the decision logs, the token that guards
// them, the build and answer metrics, and help and version, all on the
// built binary (SPEC: "Command line", "HTTP (listen.http)", "Report").

// observeRules are the rules of TestObserve. verified.test (two MX hosts
// with certificates from the world's CA, one speaking TLS 1.3 and one at
// most TLS 1.2) is raised from its floor, encrypt, to verify; nostarttls.test
// (one MX host without STARTTLS) stays at its floor, may; never.test is a
// rule that no lookup matches; phi is a sender class with a map of its own.
const observeRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: verified.test
    level: encrypt
    upgrade: verify
  - match: nostarttls.test
    level: may
    upgrade: verify
  - match: never.test
    level: secure
classes:
  - name: phi
    senders: ["@clinic.example"]
    level: verify
    on_fail: reject
`

// The field names SPEC fixes for a destination of the JSON API (and the
// -json outputs), for one of its MX hosts, a certificate, a pin and a
// history record.
var (
	destFields   = []string{"destination", "level", "answer", "floor", "rule", "probed_at", "mx", "pin", "mta_sts", "dane", "downgrades_30d"}
	mxFields     = []string{"host", "address", "starttls", "tls_version", "cipher", "certificate", "error"}
	certFields   = []string{"subject", "issuer", "not_after", "valid", "name_match"}
	pinFields    = []string{"level", "first_seen", "last_seen", "expires"}
	recordFields = []string{"time", "map", "answer", "previous", "rule", "evidence"}
)

// reportHeader is the CSV header line SPEC fixes.
const reportHeader = "destination,level,answer,floor,rule,mx_hosts,tls_versions,certificates_valid," +
	"earliest_certificate_expiry,pin_level,pin_expires,mta_sts_mode,dane,last_probe,downgrades_30d"

// apiDest is a destination of the JSON API, decoded with SPEC's names.
type apiDest struct {
	Destination   string          `json:"destination"`
	Level         string          `json:"level"`
	Answer        string          `json:"answer"`
	Floor         string          `json:"floor"`
	Rule          string          `json:"rule"`
	ProbedAt      *string         `json:"probed_at"`
	MX            []apiMX         `json:"mx"`
	Pin           *apiPin         `json:"pin"`
	MTASTS        json.RawMessage `json:"mta_sts"`
	DANE          *string         `json:"dane"`
	Downgrades30d *int            `json:"downgrades_30d"`
	History       []apiRecord     `json:"history"`
}

type apiMX struct {
	Host        string   `json:"host"`
	Address     string   `json:"address"`
	STARTTLS    bool     `json:"starttls"`
	TLSVersion  string   `json:"tls_version"`
	Cipher      string   `json:"cipher"`
	Certificate *apiCert `json:"certificate"`
	Error       string   `json:"error"`
}

type apiCert struct {
	Subject   string `json:"subject"`
	Issuer    string `json:"issuer"`
	NotAfter  string `json:"not_after"`
	Valid     bool   `json:"valid"`
	NameMatch bool   `json:"name_match"`
}

type apiPin struct {
	Level     string `json:"level"`
	FirstSeen string `json:"first_seen"`
	LastSeen  string `json:"last_seen"`
	Expires   string `json:"expires"`
}

// apiRecord is one decision history record.
type apiRecord struct {
	Time     string          `json:"time"`
	Map      string          `json:"map"`
	Answer   string          `json:"answer"`
	Previous string          `json:"previous"`
	Rule     string          `json:"rule"`
	Evidence json.RawMessage `json:"evidence"`
}

// observed is what TestObserve set up and its checks compare against.
type observed struct {
	d      *daemon
	ruleOf map[string]string // destination -> its rule as "FILE:LINE"
	never  string            // never.test's rule as "FILE:LINE"
	leaf   map[string]*x509.Certificate
	issuer string
}

// TestObserve looks at a daemon that has answered for two probed
// destinations: the status page, the destination pages, the JSON API, the
// metrics, the report and the decision history, while it runs and (history
// and report) from the state file after it stopped; and the history
// record of a change made by a reload.
func TestObserve(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	leaf1 := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx1.verified.test"}})
	leaf2 := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx2.verified.test"}})
	w.startMX(t,
		mxHost{"verified.test", "mx1.verified.test", "127.0.0.81",
			fakemx.Options{Hostname: "mx1.verified.test", TLS: &tls.Config{Certificates: []tls.Certificate{leaf1}}}},
		mxHost{"verified.test", "mx2.verified.test", "127.0.0.82",
			fakemx.Options{Hostname: "mx2.verified.test", TLS: &tls.Config{Certificates: []tls.Certificate{leaf2}, MaxVersion: tls.VersionTLS12}}},
		mxHost{"nostarttls.test", "mx.nostarttls.test", "127.0.0.83", fakemx.Options{}},
	)
	d := startDaemon(t, w.probeConfig(t, observeRules))
	text := d.configText(t)
	o := &observed{
		d: d,
		ruleOf: map[string]string{
			"verified.test":   fmt.Sprintf("%s:%d", d.configPath, lineOf(t, text, "match: verified.test")),
			"nostarttls.test": fmt.Sprintf("%s:%d", d.configPath, lineOf(t, text, "match: nostarttls.test")),
		},
		never:  fmt.Sprintf("%s:%d", d.configPath, lineOf(t, text, "match: never.test")),
		leaf:   map[string]*x509.Certificate{"mx1.verified.test": leaf1.Leaf, "mx2.verified.test": leaf2.Leaf},
		issuer: w.ca.Cert.Subject.String(),
	}

	// The lookups: the default map until the probe's evidence is in, and
	// the class map.
	table := d.socketmap(t, "tlspolicy")
	waitAnswer(t, table, "verified.test", verify, []string{encrypt}, probeSettle)
	checkLookup(t, table, lookup{key: "nostarttls.test", want: may}, "")
	waitMetric(t, d, "tlspolicyd_probes_total", map[string]string{"cause": "no_starttls"}, 1, probeSettle)
	checkLookup(t, table, lookup{key: "nostarttls.test", want: may}, "")
	phi := d.socketmap(t, "phi")
	checkLookup(t, phi, lookup{key: "verified.test", want: verify}, "")
	checkLookup(t, phi, lookup{key: "nostarttls.test", want: verify}, "")
	// The recorder writes in batches: wait until both destinations have
	// their history.
	for _, dest := range []string{"verified.test", "nostarttls.test"} {
		eventually(t, pollTimeout, dest+" history recorded", func() (bool, string) {
			v := o.apiDestination(t, dest)
			return len(recordsOf(v.History, "tlspolicy")) > 0 && len(recordsOf(v.History, "phi")) > 0,
				fmt.Sprintf("history %+v", v.History)
		})
	}
	if t.Failed() {
		t.FailNow()
	}

	t.Run("status page", o.checkStatusPage)
	t.Run("destination pages", o.checkDestinationPages)
	t.Run("API", o.checkAPI)
	t.Run("metrics", o.checkMetrics)
	t.Run("report from the daemon", func(t *testing.T) {
		o.checkReports(t, map[string]string{"verified.test": verify, "nostarttls.test": may})
	})
	t.Run("history from the daemon", func(t *testing.T) {
		o.checkFirstRecord(t, "nostarttls.test", may)
	})

	// A reload raises nostarttls.test's floor: the next lookup answers
	// encrypt, and the history records the change with its previous
	// answer.
	t.Run("change after a reload", func(t *testing.T) {
		const before, after = "  - match: nostarttls.test\n    level: may\n", "  - match: nostarttls.test\n    level: encrypt\n"
		if !strings.Contains(text, before) {
			t.Fatalf("the configuration has no %q", before)
		}
		d.writeConfig(t, strings.Replace(text, before, after, 1))
		d.reload(t)
		eventually(t, pollTimeout, "reloaded rule answers", func() (bool, string) {
			out, _, stderr := postmap(t, "nostarttls.test", table)
			return out == encrypt, fmt.Sprintf("nostarttls.test -> %q %s", out, stderr)
		})
		eventually(t, pollTimeout, "the change recorded", func() (bool, string) {
			v := o.apiDestination(t, "nostarttls.test")
			return len(recordsOf(v.History, "tlspolicy")) == 2, fmt.Sprintf("history %+v", v.History)
		})
		o.checkChange(t, "nostarttls.test", may, encrypt)
	})

	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("tlspolicyd exited with %d after SIGTERM, want 0", code)
	}
	// Without a daemon, history and report read the state file.
	t.Run("history from the state file", func(t *testing.T) {
		o.checkChange(t, "nostarttls.test", may, encrypt)
	})
	t.Run("report from the state file", func(t *testing.T) {
		o.checkReports(t, map[string]string{"verified.test": verify, "nostarttls.test": encrypt})
	})
}

// checkStatusPage checks GET /: both destinations listed with their
// levels, the counts by level, the configuration file, and the rule that
// never matched.
func (o *observed) checkStatusPage(t *testing.T) {
	page := parseHTML(t, "/", o.d.get(t, "/", nil))
	table := byID(page, "dest-table")
	if table == nil {
		t.Fatalf("GET /: no table with id dest-table\n%s", render(page))
	}
	got := map[string][]string{}
	for _, row := range tableRows(table) {
		if len(row) >= 4 {
			got[row[0]] = row
		}
	}
	for dest, want := range map[string][]string{
		"verified.test":   {"verify", verify, o.ruleOf["verified.test"]},
		"nostarttls.test": {"may", may, o.ruleOf["nostarttls.test"]},
	} {
		row := got[dest]
		if row == nil || !slices.Equal(row[1:4], want) {
			t.Errorf("GET /: destination row %q, want %q followed by %q", row, dest, want)
		}
	}
	if len(got) != 2 {
		t.Errorf("GET /: %d destination rows %q, want 2", len(got), slices.Sorted(maps.Keys(got)))
	}

	card := sectionOf(page, "Answers by level")
	if card == nil {
		t.Fatalf("GET /: no \"Answers by level\"\n%s", render(page))
	}
	counts := tableRows(card)
	for _, want := range [][]string{{"may", "1"}, {"verify", "1"}} {
		if !slices.ContainsFunc(counts, func(r []string) bool { return slices.Equal(r, want) }) {
			t.Errorf("GET /: answers by level %q, want a row %q", counts, want)
		}
	}
	if len(counts) != 2 {
		t.Errorf("GET /: answers by level %q, want two levels", counts)
	}

	// The file itself, not only as the FILE of a rule's FILE:LINE.
	if !regexp.MustCompile(regexp.QuoteMeta(o.d.configPath) + `([^:]|$)`).MatchString(textOf(page)) {
		t.Errorf("GET /: the page does not name the configuration file %s", o.d.configPath)
	}
	var unmatched []string
	for _, li := range findAll(page, func(n *html.Node) bool { return n.Data == "li" }) {
		unmatched = append(unmatched, textOf(li))
	}
	if !slices.ContainsFunc(unmatched, func(s string) bool { return strings.Contains(s, o.never) && strings.Contains(s, "never.test") }) {
		t.Errorf("GET /: rules that never matched %q, want one naming %s (never.test)", unmatched, o.never)
	}
	for dest, rule := range o.ruleOf {
		if slices.ContainsFunc(unmatched, func(s string) bool { return strings.Contains(s, rule+" ") }) {
			t.Errorf("GET /: %s (%s) listed as never matched, but it answered lookups", rule, dest)
		}
	}
}

// checkDestinationPages checks GET /d/NAME: the answer of each map, the MX
// hosts with what the probe found, and the history.
func (o *observed) checkDestinationPages(t *testing.T) {
	page := parseHTML(t, "/d/verified.test", o.d.get(t, "/d/verified.test", nil))
	rows := tableRows(sectionTable(t, page, "Answers per map"))
	for _, want := range [][]string{{"tlspolicy", verify}, {"phi", verify}} {
		if !slices.ContainsFunc(rows, func(r []string) bool { return len(r) >= 2 && slices.Equal(r[:2], want) }) {
			t.Errorf("GET /d/verified.test: answers per map %q, want a row %q", rows, want)
		}
	}
	hosts := tableRows(sectionTable(t, page, "MX hosts"))
	for host, want := range map[string][]string{
		"mx1.verified.test": {"127.0.0.81", "yes", "TLSv1.3"},
		"mx2.verified.test": {"127.0.0.82", "yes", "TLSv1.2"},
	} {
		// host, address, probed, STARTTLS, TLS, cipher, certificate, error
		i := slices.IndexFunc(hosts, func(r []string) bool { return len(r) >= 8 && r[0] == host })
		if i < 0 {
			t.Errorf("GET /d/verified.test: MX hosts %q, no row for %s", hosts, host)
			continue
		}
		row := hosts[i]
		if got := []string{row[1], row[3], row[4]}; !slices.Equal(got, want) || row[5] == "" {
			t.Errorf("GET /d/verified.test: MX host %s: %q, want address, STARTTLS, TLS %q and a cipher", host, row, want)
		}
		if probed, err := time.Parse(time.RFC3339, row[2]); err != nil || time.Since(probed) > time.Minute {
			t.Errorf("GET /d/verified.test: MX host %s: probed %q, want when the host was probed (RFC 3339, just now)", host, row[2])
		}
		cert := row[6]
		leaf := o.leaf[host]
		for _, s := range []string{leaf.Subject.String(), o.issuer, leaf.NotAfter.UTC().Format(time.RFC3339), "chain valid", "name matches"} {
			if !strings.Contains(cert, s) {
				t.Errorf("GET /d/verified.test: MX host %s: certificate %q, want it to show %q", host, cert, s)
			}
		}
	}
	hist := tableRows(sectionTable(t, page, "History"))
	if !slices.ContainsFunc(hist, func(r []string) bool {
		return len(r) >= 5 && r[1] == "tlspolicy" && r[2] == verify && r[4] == o.ruleOf["verified.test"]
	}) {
		t.Errorf("GET /d/verified.test: history %q, want a tlspolicy record answering %q by %s", hist, verify, o.ruleOf["verified.test"])
	}

	page = parseHTML(t, "/d/nostarttls.test", o.d.get(t, "/d/nostarttls.test", nil))
	rows = tableRows(sectionTable(t, page, "Answers per map"))
	for _, want := range [][]string{{"tlspolicy", may}, {"phi", verify}} {
		if !slices.ContainsFunc(rows, func(r []string) bool { return len(r) >= 2 && slices.Equal(r[:2], want) }) {
			t.Errorf("GET /d/nostarttls.test: answers per map %q, want a row %q", rows, want)
		}
	}
	hosts = tableRows(sectionTable(t, page, "MX hosts"))
	if len(hosts) != 1 || len(hosts[0]) < 8 || hosts[0][0] != "mx.nostarttls.test" || hosts[0][3] != "no" || hosts[0][4] != "" || hosts[0][7] == "" {
		t.Errorf("GET /d/nostarttls.test: MX hosts %q, want mx.nostarttls.test without STARTTLS or TLS, with an error", hosts)
	}
	if code, _ := o.d.status(t, "/d/nosuch..name", nil); code != http.StatusBadRequest && code != http.StatusNotFound {
		t.Errorf("GET /d/nosuch..name: status %d, want 400 or 404", code)
	}
}

// checkAPI checks GET /api/v1/destinations and /api/v1/destinations/NAME
// against SPEC's field names and what the probes found.
func (o *observed) checkAPI(t *testing.T) {
	body := o.d.get(t, "/api/v1/destinations", nil)
	var list struct {
		Destinations []json.RawMessage `json:"destinations"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("GET /api/v1/destinations: %v\n%s", err, body)
	}
	var names []string
	for _, raw := range list.Destinations {
		v := checkDestJSON(t, "GET /api/v1/destinations", raw, false)
		names = append(names, v.Destination)
	}
	if !slices.Equal(names, []string{"nostarttls.test", "verified.test"}) {
		t.Errorf("GET /api/v1/destinations: destinations %q, want nostarttls.test and verified.test", names)
	}

	for _, dest := range []string{"verified.test", "nostarttls.test"} {
		raw := o.d.get(t, "/api/v1/destinations/"+dest, nil)
		v := checkDestJSON(t, "GET /api/v1/destinations/"+dest, json.RawMessage(raw), true)
		o.checkDest(t, "GET /api/v1/destinations/"+dest, v)
	}
}

// checkDest compares a destination's view with what TestObserve set up.
func (o *observed) checkDest(t *testing.T, what string, v apiDest) {
	t.Helper()
	mustRFC3339(t, what+" probed_at", deref(v.ProbedAt))
	if v.Rule != o.ruleOf[v.Destination] {
		t.Errorf("%s: rule %q, want %q", what, v.Rule, o.ruleOf[v.Destination])
	}
	if string(v.MTASTS) != "null" {
		t.Errorf("%s: mta_sts %s, want null (MTA-STS is disabled)", what, v.MTASTS)
	}
	if v.Downgrades30d == nil || *v.Downgrades30d != 0 {
		t.Errorf("%s: downgrades_30d %v, want 0", what, v.Downgrades30d)
	}
	switch v.Destination {
	case "verified.test":
		if v.Level != "verify" || v.Answer != verify || v.Floor != "encrypt" {
			t.Errorf("%s: level %q, answer %q, floor %q; want verify, %q, encrypt", what, v.Level, v.Answer, v.Floor, verify)
		}
		if v.Pin == nil || v.Pin.Level != "verify" {
			t.Errorf("%s: pin %+v, want a verify pin", what, v.Pin)
		} else {
			for name, s := range map[string]string{"first_seen": v.Pin.FirstSeen, "last_seen": v.Pin.LastSeen, "expires": v.Pin.Expires} {
				mustRFC3339(t, what+" pin."+name, s)
			}
		}
		wantVersion := map[string]string{"mx1.verified.test": "TLSv1.3", "mx2.verified.test": "TLSv1.2"}
		wantAddr := map[string]string{"mx1.verified.test": "127.0.0.81", "mx2.verified.test": "127.0.0.82"}
		if len(v.MX) != 2 {
			t.Errorf("%s: mx %+v, want mx1 and mx2.verified.test", what, v.MX)
		}
		for _, mx := range v.MX {
			if mx.Address != wantAddr[mx.Host] || !mx.STARTTLS || mx.TLSVersion != wantVersion[mx.Host] || mx.Cipher == "" || mx.Error != "" {
				t.Errorf("%s: mx %+v, want %s at %s with STARTTLS, %s, a cipher and no error",
					what, mx, mx.Host, wantAddr[mx.Host], wantVersion[mx.Host])
			}
			c, leaf := mx.Certificate, o.leaf[mx.Host]
			if c == nil || leaf == nil {
				t.Errorf("%s: mx %s: certificate %+v", what, mx.Host, c)
				continue
			}
			notAfter := mustRFC3339(t, what+" not_after", c.NotAfter)
			if c.Subject != leaf.Subject.String() || c.Issuer != o.issuer || !notAfter.Equal(leaf.NotAfter) || !c.Valid || !c.NameMatch {
				t.Errorf("%s: mx %s: certificate %+v, want subject %q, issuer %q, not_after %s, valid, name_match",
					what, mx.Host, *c, leaf.Subject, o.issuer, leaf.NotAfter.UTC().Format(time.RFC3339))
			}
		}
	case "nostarttls.test":
		if v.Level != "may" || v.Answer != may || v.Floor != "may" {
			t.Errorf("%s: level %q, answer %q, floor %q; want may, may, may", what, v.Level, v.Answer, v.Floor)
		}
		if v.Pin != nil {
			t.Errorf("%s: pin %+v, want null", what, *v.Pin)
		}
		if len(v.MX) != 1 || v.MX[0].Host != "mx.nostarttls.test" || v.MX[0].Address != "127.0.0.83" || v.MX[0].STARTTLS ||
			v.MX[0].TLSVersion != "" || v.MX[0].Certificate != nil || v.MX[0].Error == "" {
			t.Errorf("%s: mx %+v, want mx.nostarttls.test at 127.0.0.83 without STARTTLS, TLS or certificate, with an error", what, v.MX)
		}
	default:
		t.Errorf("%s: unexpected destination %q", what, v.Destination)
	}
}

// checkDestJSON checks that raw has every field SPEC names for a
// destination (and its MX hosts, certificates, pin and, when withHistory,
// history records), and decodes it.
func checkDestJSON(t *testing.T, what string, raw json.RawMessage, withHistory bool) apiDest {
	t.Helper()
	fields := destFields
	if withHistory {
		fields = append(slices.Clone(destFields), "history")
	}
	obj := requireFields(t, what, raw, fields)
	var v apiDest
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, raw)
	}
	var mxs []json.RawMessage
	json.Unmarshal(obj["mx"], &mxs)
	for _, mx := range mxs {
		m := requireFields(t, what+" mx", mx, mxFields)
		if c := m["certificate"]; c != nil && string(c) != "null" {
			requireFields(t, what+" certificate", c, certFields)
		}
	}
	if p := obj["pin"]; p != nil && string(p) != "null" {
		requireFields(t, what+" pin", p, pinFields)
	}
	if withHistory {
		var recs []json.RawMessage
		json.Unmarshal(obj["history"], &recs)
		for _, r := range recs {
			requireFields(t, what+" history", r, recordFields)
		}
	}
	return v
}

// requireFields decodes a JSON object and checks that it has fields.
func requireFields(t *testing.T, what string, raw json.RawMessage, fields []string) map[string]json.RawMessage {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatalf("%s: not a JSON object: %v\n%s", what, err, raw)
	}
	for _, f := range fields {
		if _, ok := obj[f]; !ok {
			t.Errorf("%s: no field %q in %s", what, f, raw)
		}
	}
	return obj
}

// checkMetrics checks tlspolicyd_build_info against the version command,
// and that tlspolicyd_answers_total counts the lookups made.
func (o *observed) checkMetrics(t *testing.T) {
	code, out, _ := runTool(t, "version")
	m := versionLine.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("tlspolicyd version: exit %d, %q; want %s", code, out, versionLine)
	}
	samples := o.d.scrape(t)
	var build []sample
	for _, s := range samples {
		if s.name == "tlspolicyd_build_info" {
			build = append(build, s)
		}
	}
	want := map[string]string{"version": m[1], "revision": m[2], "goversion": m[3]}
	if len(build) != 1 || build[0].value != 1 || !hasLabels(build[0].labels, want) {
		t.Errorf("tlspolicyd_build_info: %+v, want one series of value 1 with labels %v (as `tlspolicyd version` says)", build, want)
	}

	// Every verify answer of the default map is counted, on connections
	// open or closed.
	verifyAnswers := map[string]string{"map": "tlspolicy", "level": "verify"}
	before := o.d.metric(t, "tlspolicyd_answers_total", verifyAnswers)
	if before < 1 {
		t.Errorf("tlspolicyd_answers_total%v = %v after the lookups, want at least 1", verifyAnswers, before)
	}
	const n = 3
	rc := newRawConn(t, o.d, "socketmap", "socketmap")
	for range n {
		rc.ask("tlspolicy", "verified.test", "OK "+verify)
	}
	rc.ask("tlspolicy", "nostarttls.test", "OK "+may)
	if got := o.d.metric(t, "tlspolicyd_answers_total", verifyAnswers); got != before+n {
		t.Errorf("tlspolicyd_answers_total%v = %v after %d more verify answers, want %v", verifyAnswers, got, n, before+n)
	}
	rc.c.Close()
	if got := o.d.metric(t, "tlspolicyd_answers_total", verifyAnswers); got != before+n {
		t.Errorf("tlspolicyd_answers_total%v = %v once the connection closed, want %v", verifyAnswers, got, before+n)
	}
	if got := o.d.metric(t, "tlspolicyd_answers_total", map[string]string{"map": "phi", "level": "verify"}); got != 2 {
		t.Errorf(`tlspolicyd_answers_total{map="phi",level="verify"} = %v, want 2`, got)
	}
}

// versionLine is what `tlspolicyd version` prints: VERSION, REVISION and
// GOVERSION.
var versionLine = regexp.MustCompile(`^tlspolicyd (\S+) \((\S+), (go\S+)\)\n$`)

// checkReports runs `tlspolicyd report` in each format and checks the
// rows against answers (destination -> answer).
func (o *observed) checkReports(t *testing.T, answers map[string]string) {
	config := o.d.configPath

	code, out, errOut := runTool(t, "report", "-config", config, "-format", "csv")
	if code != 0 {
		t.Fatalf("tlspolicyd report -format csv: exit %d, stderr %q", code, errOut)
	}
	o.checkCSV(t, out, answers)

	code, out, errOut = runTool(t, "report", "-config", config, "-format", "json")
	if code != 0 {
		t.Fatalf("tlspolicyd report -format json: exit %d, stderr %q", code, errOut)
	}
	var rep struct {
		Destinations []json.RawMessage `json:"destinations"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("tlspolicyd report -format json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, raw := range rep.Destinations {
		v := checkDestJSON(t, "report -format json", raw, false)
		if v.Level != bareLevel(v.Answer) {
			t.Errorf("report -format json: %s: level %q with answer %q", v.Destination, v.Level, v.Answer)
		}
		got[v.Destination] = v.Answer
	}
	if !maps.Equal(got, answers) {
		t.Errorf("report -format json: destinations and answers %v, want %v", got, answers)
	}

	file := filepath.Join(t.TempDir(), "report.html")
	code, _, errOut = runTool(t, "report", "-config", config, "-format", "html", "-o", file)
	if code != 0 {
		t.Fatalf("tlspolicyd report -format html -o %s: exit %d, stderr %q", file, code, errOut)
	}
	doc, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(conf)
	trimmed := strings.TrimSpace(string(doc))
	if !strings.HasPrefix(strings.ToLower(trimmed), "<!doctype html>") || !strings.HasSuffix(trimmed, "</html>") {
		t.Errorf("report -format html: not a complete HTML document (from <!DOCTYPE html> to </html>):\n%s", doc)
	}
	page := parseHTML(t, "report -format html", string(doc))
	if len(findAll(page, func(n *html.Node) bool { return n.Data == "body" })) != 1 ||
		len(findAll(page, func(n *html.Node) bool { return n.Data == "title" })) != 1 {
		t.Errorf("report -format html: no title or body:\n%s", doc)
	}
	body := textOf(page)
	for _, s := range []string{config, hex.EncodeToString(sum[:]), "verified.test", "nostarttls.test"} {
		if !strings.Contains(body, s) {
			t.Errorf("report -format html: the document does not show %q", s)
		}
	}
}

// checkCSV checks the CSV report: SPEC's header, one row per destination,
// lists separated by spaces, times in RFC 3339.
func (o *observed) checkCSV(t *testing.T, out string, answers map[string]string) {
	t.Helper()
	if first, _, _ := strings.Cut(out, "\n"); strings.TrimSuffix(first, "\r") != reportHeader {
		t.Errorf("report -format csv: header\n  %q\nwant\n  %q", first, reportHeader)
	}
	records, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(records) == 0 {
		t.Fatalf("report -format csv: %v\n%s", err, out)
	}
	col := map[string]int{}
	for i, name := range records[0] {
		col[name] = i
	}
	rows := map[string][]string{}
	for _, r := range records[1:] {
		if _, dup := rows[r[0]]; dup {
			t.Errorf("report -format csv: %s has two rows", r[0])
		}
		rows[r[0]] = r
	}
	if len(rows) != len(answers) {
		t.Errorf("report -format csv: %d rows, want one per destination %v:\n%s", len(rows), slices.Sorted(maps.Keys(answers)), out)
	}
	field := func(dest, name string) string {
		r := rows[dest]
		if r == nil {
			return ""
		}
		return r[col[name]]
	}
	for dest, answer := range answers {
		if rows[dest] == nil {
			t.Errorf("report -format csv: no row for %s:\n%s", dest, out)
			continue
		}
		if field(dest, "level") != bareLevel(answer) || field(dest, "answer") != answer || field(dest, "rule") != o.ruleOf[dest] || field(dest, "downgrades_30d") != "0" {
			t.Errorf("report -format csv: %s: %q, want level %s, answer %q, rule %s, downgrades_30d 0",
				dest, rows[dest], bareLevel(answer), answer, o.ruleOf[dest])
		}
		mustRFC3339(t, "report -format csv: "+dest+" last_probe", field(dest, "last_probe"))
	}
	const v = "verified.test"
	if got := strings.Split(field(v, "mx_hosts"), " "); !slices.Equal(sorted(got), []string{"mx1.verified.test", "mx2.verified.test"}) {
		t.Errorf("report -format csv: %s mx_hosts %q, want mx1.verified.test and mx2.verified.test separated by a space", v, field(v, "mx_hosts"))
	}
	if got := strings.Split(field(v, "tls_versions"), " "); !slices.Equal(sorted(got), []string{"TLSv1.2", "TLSv1.3"}) {
		t.Errorf("report -format csv: %s tls_versions %q, want TLSv1.3 and TLSv1.2 separated by a space", v, field(v, "tls_versions"))
	}
	earliest := o.leaf["mx1.verified.test"].NotAfter
	if e2 := o.leaf["mx2.verified.test"].NotAfter; e2.Before(earliest) {
		earliest = e2
	}
	if e := mustRFC3339(t, "report -format csv: "+v+" earliest_certificate_expiry", field(v, "earliest_certificate_expiry")); !e.Equal(earliest) {
		t.Errorf("report -format csv: %s earliest_certificate_expiry %s, want %s", v, e, earliest.UTC().Format(time.RFC3339))
	}
	if field(v, "certificates_valid") != "true" || field(v, "pin_level") != "verify" {
		t.Errorf("report -format csv: %s certificates_valid %q, pin_level %q; want true, verify", v, field(v, "certificates_valid"), field(v, "pin_level"))
	}
	mustRFC3339(t, "report -format csv: "+v+" pin_expires", field(v, "pin_expires"))
	const n = "nostarttls.test"
	if field(n, "mx_hosts") != "mx.nostarttls.test" || field(n, "tls_versions") != "" || field(n, "pin_level") != "" || field(n, "certificates_valid") != "" {
		t.Errorf("report -format csv: %s: %q, want mx.nostarttls.test without TLS versions, certificates or pin", n, rows[n])
	}
}

// checkFirstRecord checks the history of dest with one answer so far:
// `tlspolicyd history -json` and the text form.
func (o *observed) checkFirstRecord(t *testing.T, dest, answer string) {
	recs := o.historyJSON(t, dest)
	tp := recordsOf(recs, "tlspolicy")
	if len(tp) != 1 || tp[0].Answer != answer || tp[0].Previous != "" || tp[0].Rule != o.ruleOf[dest] {
		t.Errorf("history -json %s: tlspolicy records %+v, want one: answer %q, previous \"\", rule %q", dest, tp, answer, o.ruleOf[dest])
	}
	for _, r := range recs {
		mustRFC3339(t, "history -json "+dest+" time", r.Time)
	}
	rows := o.historyText(t, dest)
	if !slices.ContainsFunc(rows, func(r []string) bool {
		return len(r) >= 5 && r[1] == "tlspolicy" && r[2] == answer && r[3] == "-" && r[4] == o.ruleOf[dest]
	}) {
		t.Errorf("history %s: rows %q, want one for tlspolicy: %q, previous -, rule %s", dest, rows, answer, o.ruleOf[dest])
	}
}

// checkChange checks the history of dest after its answer changed from
// before to after: newest first, the change names its previous answer.
func (o *observed) checkChange(t *testing.T, dest, before, after string) {
	tp := recordsOf(o.historyJSON(t, dest), "tlspolicy")
	if len(tp) != 2 ||
		tp[0].Answer != after || tp[0].Previous != before || tp[0].Rule != o.ruleOf[dest] ||
		tp[1].Answer != before || tp[1].Previous != "" || tp[1].Rule != o.ruleOf[dest] {
		t.Errorf("history -json %s: tlspolicy records %+v\nwant, newest first: %q (previous %q), then %q (previous \"\"), both by %s",
			dest, tp, after, before, before, o.ruleOf[dest])
	} else if t0, t1 := mustRFC3339(t, "time", tp[0].Time), mustRFC3339(t, "time", tp[1].Time); t0.Before(t1) {
		t.Errorf("history -json %s: %s listed before %s: want newest first", dest, tp[0].Time, tp[1].Time)
	}
	var tpRows [][]string
	for _, r := range o.historyText(t, dest) {
		if len(r) >= 5 && r[1] == "tlspolicy" {
			tpRows = append(tpRows, r[1:5])
		}
	}
	want := [][]string{{"tlspolicy", after, before, o.ruleOf[dest]}, {"tlspolicy", before, "-", o.ruleOf[dest]}}
	if !slices.EqualFunc(tpRows, want, slices.Equal) {
		t.Errorf("history %s: tlspolicy rows (map, answer, previous, rule) %q, want %q", dest, tpRows, want)
	}
}

// historyJSON runs `tlspolicyd history -json DEST`.
func (o *observed) historyJSON(t *testing.T, dest string) []apiRecord {
	t.Helper()
	code, out, errOut := runTool(t, "history", "-config", o.d.configPath, "-json", dest)
	if code != 0 {
		t.Fatalf("tlspolicyd history -json %s: exit %d, stderr %q", dest, code, errOut)
	}
	var raws []json.RawMessage
	if err := json.Unmarshal([]byte(out), &raws); err != nil {
		t.Fatalf("tlspolicyd history -json %s: not a JSON list: %v\n%s", dest, err, out)
	}
	var recs []apiRecord
	for _, raw := range raws {
		requireFields(t, "history -json "+dest, raw, recordFields)
		var r apiRecord
		json.Unmarshal(raw, &r)
		recs = append(recs, r)
	}
	return recs
}

// historyText runs `tlspolicyd history DEST` and splits its rows into
// columns (TIME MAP ANSWER PREVIOUS RULE EVIDENCE, at least two spaces
// apart; answers have single spaces inside).
func (o *observed) historyText(t *testing.T, dest string) [][]string {
	t.Helper()
	code, out, errOut := runTool(t, "history", "-config", o.d.configPath, dest)
	if code != 0 {
		t.Fatalf("tlspolicyd history %s: exit %d, stderr %q", dest, code, errOut)
	}
	var rows [][]string
	for i, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		cols := columns.Split(strings.TrimSpace(line), -1)
		if i == 0 {
			continue // the header
		}
		mustRFC3339(t, "history "+dest+" TIME", cols[0])
		rows = append(rows, cols)
	}
	return rows
}

var columns = regexp.MustCompile(`\s{2,}`)

// apiDestination is GET /api/v1/destinations/NAME.
func (o *observed) apiDestination(t *testing.T, name string) apiDest {
	t.Helper()
	var v apiDest
	body := o.d.get(t, "/api/v1/destinations/"+name, nil)
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("GET /api/v1/destinations/%s: %v\n%s", name, err, body)
	}
	return v
}

// recordsOf are the records of one map, in their order.
func recordsOf(recs []apiRecord, mapName string) []apiRecord {
	var out []apiRecord
	for _, r := range recs {
		if r.Map == mapName {
			out = append(out, r)
		}
	}
	return out
}

// TestDecisionLogs: log.format json makes every line the daemon writes a
// JSON object; log.decisions changes logs one record per changed answer
// (with destination, map, answer, previous and rule), all logs every
// lookup, and log.level debug logs each lookup at debug level.
func TestDecisionLogs(t *testing.T) {
	t.Parallel()

	t.Run("changes", func(t *testing.T) {
		t.Parallel()
		config := listenInet + hermetic + "log:\n  format: json\n  decisions: changes\n" + rules
		d := startDaemon(t, config)
		rule := fmt.Sprintf("%s:%d", d.configPath, lineOf(t, d.configText(t), "match: example.org"))
		rc := newRawConn(t, d, "socketmap", "socketmap")
		for range 3 {
			rc.ask("tlspolicy", "example.org", "OK "+verify)
		}
		rc.ask("tlspolicy", "mx.example.org", "OK "+encrypt)
		// The recorder logs in the order of the lookups: once the last
		// one is in, so are the others.
		waitLog(t, d, `"decision changed" for mx.example.org`, func(r logRecord) bool {
			return r["msg"] == "decision changed" && r["destination"] == "mx.example.org"
		})
		recs := logRecords(t, d)
		changed := filterLog(recs, func(r logRecord) bool { return r["msg"] == "decision changed" && r["destination"] == "example.org" })
		want := logRecord{"level": "INFO", "destination": "example.org", "map": "tlspolicy", "answer": verify, "previous": "", "rule": rule}
		if len(changed) != 1 || !hasFields(changed[0], want) {
			t.Errorf("after 3 lookups of example.org: \"decision changed\" records %v, want one with %v", changed, want)
		}
		if n := len(filterLog(recs, func(r logRecord) bool { return r["msg"] == "decision" || r["msg"] == "lookup" })); n != 0 {
			t.Errorf("decisions: changes at level info logged %d records of single lookups, want none", n)
		}

		// A change after a reload names the previous answer.
		d.writeConfig(t, strings.Replace(config, "  - match: example.org\n    level: verify\n", "  - match: example.org\n    level: secure\n", 1))
		d.reload(t)
		eventually(t, pollTimeout, "the reload", func() (bool, string) {
			rc.send(netstring("tlspolicy example.org"))
			got := rc.reply()
			return got == "OK "+secure, "example.org -> " + got
		})
		want = logRecord{"destination": "example.org", "map": "tlspolicy", "answer": secure, "previous": verify, "rule": rule}
		waitLog(t, d, fmt.Sprintf("a \"decision changed\" record with %v", want), func(r logRecord) bool {
			return r["msg"] == "decision changed" && hasFields(r, want)
		})
	})

	t.Run("all", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, listenInet+hermetic+"log:\n  format: json\n  decisions: all\n"+rules)
		rc := newRawConn(t, d, "socketmap", "socketmap")
		const n = 3
		for range n {
			rc.ask("tlspolicy", "example.org", "OK "+verify)
		}
		rc.ask("tlspolicy", "mx.example.org", "OK "+encrypt)
		waitLog(t, d, `"decision" for mx.example.org`, func(r logRecord) bool {
			return r["msg"] == "decision" && r["destination"] == "mx.example.org"
		})
		want := logRecord{"destination": "example.org", "map": "tlspolicy", "answer": verify}
		if got := filterLog(logRecords(t, d), func(r logRecord) bool { return r["msg"] == "decision" && hasFields(r, want) }); len(got) != n {
			t.Errorf("decisions: all: %d \"decision\" records with %v after %d lookups, want %d: %v", len(got), want, n, n, got)
		}
	})

	t.Run("debug", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, listenInet+hermetic+"log:\n  level: debug\n  format: json\n  decisions: none\n"+rules)
		rc := newRawConn(t, d, "socketmap", "socketmap")
		rc.ask("tlspolicy", "example.org", "OK "+verify)
		waitLog(t, d, "a debug record of the lookup", func(r logRecord) bool {
			return r["level"] == "DEBUG" && r["map"] == "tlspolicy" && r["key"] == "example.org" &&
				strings.Contains(fmt.Sprint(r["reply"]), verify)
		})
		if got := filterLog(logRecords(t, d), func(r logRecord) bool { return strings.HasPrefix(fmt.Sprint(r["msg"]), "decision") }); len(got) != 0 {
			t.Errorf("decisions: none logged decision records: %v", got)
		}
	})
}

// logRecord is one JSON line of the daemon's log.
type logRecord map[string]any

// logRecords parses the daemon's log, every line of which must be a JSON
// object.
func logRecords(t *testing.T, d *daemon) []logRecord {
	t.Helper()
	var out []logRecord
	for i, line := range strings.Split(strings.TrimRight(d.logText(), "\n"), "\n") {
		var r logRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %d is not a JSON object (log.format: json): %v\n%s", i+1, err, line)
		}
		out = append(out, r)
	}
	return out
}

// waitLog polls the daemon's log until a record satisfies match.
func waitLog(t *testing.T, d *daemon, what string, match func(logRecord) bool) {
	t.Helper()
	eventually(t, pollTimeout, "log "+what, func() (bool, string) {
		return slices.ContainsFunc(logRecords(t, d), match), "not logged"
	})
}

func filterLog(recs []logRecord, keep func(logRecord) bool) []logRecord {
	var out []logRecord
	for _, r := range recs {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

func hasFields(r, want logRecord) bool {
	for k, v := range want {
		if got, ok := r[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// TestHTTPAuth: with http.auth_file, the status page and the API need the
// token (as a bearer token or a basic-auth password); /healthz and
// /metrics do not; history and report pass it to the daemon. A listen.http
// beyond loopback without auth_file is an invalid configuration.
func TestHTTPAuth(t *testing.T) {
	t.Parallel()
	const token = "s3cret-token-0123456789"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("  "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	authBlock := fmt.Sprintf("http:\n  auth_file: %q\n", tokenFile)

	t.Run("daemon", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, listenInet+hermetic+authBlock+rules)
		newRawConn(t, d, "socketmap", "socketmap").ask("tlspolicy", "example.org", "OK "+verify)

		bearer := http.Header{"Authorization": {"Bearer " + token}}
		basic := func(user, password string) http.Header {
			r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			r.SetBasicAuth(user, password)
			return r.Header
		}
		for _, path := range []string{"/", "/d/example.org", "/api/v1/destinations", "/api/v1/destinations/example.org", "/admin/pins"} {
			for _, c := range []struct {
				how    string
				header http.Header
				want   int
			}{
				{"no token", nil, http.StatusUnauthorized},
				{"a wrong bearer token", http.Header{"Authorization": {"Bearer wrong"}}, http.StatusUnauthorized},
				{"a wrong basic-auth password", basic("postmaster", "wrong"), http.StatusUnauthorized},
				{"the bearer token", bearer, http.StatusOK},
				{"the token as basic-auth password", basic("postmaster", token), http.StatusOK},
			} {
				if code, _ := d.status(t, path, c.header); code != c.want {
					t.Errorf("GET %s with %s: status %d, want %d", path, c.how, code, c.want)
				}
			}
		}
		for _, path := range []string{"/healthz", "/metrics"} {
			if code, _ := d.status(t, path, nil); code != http.StatusOK {
				t.Errorf("GET %s without a token: status %d, want 200", path, code)
			}
		}

		// The commands find the token in the configuration and ask the
		// daemon, which holds the state file.
		code, out, errOut := runTool(t, "history", "-config", d.configPath, "-json", "example.org")
		var recs []apiRecord
		if code != 0 || json.Unmarshal([]byte(out), &recs) != nil {
			t.Errorf("tlspolicyd history -json example.org through the daemon: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		code, out, errOut = runTool(t, "report", "-config", d.configPath, "-format", "csv")
		if code != 0 || !strings.HasPrefix(out, reportHeader+"\n") {
			t.Errorf("tlspolicyd report through the daemon: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})

	t.Run("beyond loopback needs auth_file", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		open := strings.Replace(listenInet, "http: @HTTP@", "http: 0.0.0.0:10032", 1) + hermetic + rules
		path := writeStatic(t, dir, open)
		code, out := runCLI(t, dir, "check", "-config", path)
		prefix := fmt.Sprintf("%s:%d: ", path, lineOf(t, open, "http: 0.0.0.0"))
		var line string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, prefix) && strings.Contains(l, "http.auth_file") {
				line = l
			}
		}
		if code != 1 || line == "" {
			t.Errorf("check with listen.http 0.0.0.0 and no http.auth_file: exit %d, want 1 and a line %q naming http.auth_file; output:\n%s", code, prefix, out)
		}
		// With the token file, the same listener is valid.
		path = writeStatic(t, dir, open+authBlock)
		if code, out := runCLI(t, dir, "check", "-config", path); code != 0 {
			t.Errorf("check with listen.http 0.0.0.0 and http.auth_file: exit %d, want 0; output:\n%s", code, out)
		}
	})
}

// TestHelpAndVersion: help, -h and --help print the whole usage on
// standard output and exit 0; version prints VERSION, REVISION and
// GOVERSION.
func TestHelpAndVersion(t *testing.T) {
	t.Parallel()
	var usages []string
	for _, arg := range []string{"help", "-h", "--help"} {
		code, out, errOut := runTool(t, arg)
		if code != 0 || errOut != "" {
			t.Errorf("tlspolicyd %s: exit %d, stderr %q; want 0 and nothing on stderr", arg, code, errOut)
		}
		for _, cmd := range []string{"[serve]", "check", "query", "probe", "pins", "history", "report", "import-postfix", "version", "help"} {
			if !regexp.MustCompile(`(?m)^\s*tlspolicyd\s+` + regexp.QuoteMeta(cmd) + `\s`).MatchString(out) {
				t.Errorf("tlspolicyd %s: the usage has no line for `tlspolicyd %s`:\n%s", arg, cmd, out)
			}
		}
		usages = append(usages, out)
	}
	if usages[0] != usages[1] || usages[1] != usages[2] {
		t.Errorf("help, -h and --help print different usages:\n%s\n---\n%s\n---\n%s", usages[0], usages[1], usages[2])
	}

	code, out, errOut := runTool(t, "version")
	if code != 0 || !versionLine.MatchString(out) {
		t.Errorf("tlspolicyd version: exit %d, stdout %q, stderr %q; want 0 and a line matching %s", code, out, errOut, versionLine)
	}
}

// Helpers for HTTP, HTML and values.

// status makes one GET on the daemon's HTTP listener with header and
// returns the status and body.
func (d *daemon) status(t *testing.T, path string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+d.http+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// get is status that requires 200.
func (d *daemon) get(t *testing.T, path string, header http.Header) string {
	t.Helper()
	code, body := d.status(t, path, header)
	if code != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200\n%s", path, code, body)
	}
	return body
}

// scrape returns every sample of /metrics.
func (d *daemon) scrape(t *testing.T) []sample {
	t.Helper()
	samples, err := parseMetrics(d.get(t, "/metrics", nil))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return samples
}

// configText is the daemon's configuration file as written.
func (d *daemon) configText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(d.configPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func parseHTML(t *testing.T, what, text string) *html.Node {
	t.Helper()
	n, err := html.Parse(strings.NewReader(text))
	if err != nil {
		t.Fatalf("%s: not HTML: %v", what, err)
	}
	return n
}

func render(n *html.Node) string {
	var b bytes.Buffer
	html.Render(&b, n)
	return b.String()
}

// findAll returns the element nodes under n (n included) that match, in
// document order.
func findAll(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

func byID(n *html.Node, id string) *html.Node {
	found := findAll(n, func(n *html.Node) bool {
		return slices.ContainsFunc(n.Attr, func(a html.Attribute) bool { return a.Key == "id" && a.Val == id })
	})
	if len(found) == 0 {
		return nil
	}
	return found[0]
}

// textOf is the text under n with runs of white space made one space.
func textOf(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		if n.Type == html.ElementNode && n.Data == "br" {
			b.WriteString(" ")
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

// tableRows are the texts of the cells of every body row (rows of td
// cells) under n.
func tableRows(n *html.Node) [][]string {
	var rows [][]string
	for _, tr := range findAll(n, func(n *html.Node) bool { return n.Data == "tr" }) {
		var cells []string
		for c := tr.FirstChild; c != nil; c = c.NextSibling {
			if c.Type == html.ElementNode && c.Data == "td" {
				cells = append(cells, textOf(c))
			}
		}
		if len(cells) > 0 {
			rows = append(rows, cells)
		}
	}
	return rows
}

// sectionOf is the parent of the heading whose text is heading: the card
// or section it heads.
func sectionOf(page *html.Node, heading string) *html.Node {
	for _, h := range findAll(page, func(n *html.Node) bool { return n.Data == "h2" || n.Data == "h3" }) {
		if textOf(h) == heading {
			return h.Parent
		}
	}
	return nil
}

// sectionTable is the first table after the h2 whose text is heading.
func sectionTable(t *testing.T, page *html.Node, heading string) *html.Node {
	t.Helper()
	for _, h := range findAll(page, func(n *html.Node) bool { return n.Data == "h2" }) {
		if textOf(h) != heading {
			continue
		}
		for s := h.NextSibling; s != nil; s = s.NextSibling {
			if s.Type != html.ElementNode {
				continue
			}
			if s.Data == "h2" {
				break
			}
			if s.Data == "table" {
				return s
			}
			if tables := findAll(s, func(n *html.Node) bool { return n.Data == "table" }); len(tables) > 0 {
				return tables[0]
			}
		}
	}
	t.Fatalf("no table under the heading %q in\n%s", heading, render(page))
	return nil
}

// mustRFC3339 parses an RFC 3339 time, failing the test if it is not one.
func mustRFC3339(t *testing.T, what, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Errorf("%s: %q is not an RFC 3339 time", what, s)
	}
	return v
}

// bareLevel is the level of a policy answer ("verify" of "verify
// protocols=>=TLSv1.2").
func bareLevel(answer string) string {
	level, _, _ := strings.Cut(answer, " ")
	return level
}

func deref(s *string) string {
	if s == nil {
		return "<null>"
	}
	return *s
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }
