package acceptance

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Pins say the truth: a pin above what the rule's upgrade lets
// evidence raise to is kept and answered at the cap, and everything that
// shows the pin says so and where the cap is set; a pin is lowered only
// when asked with -force; a refused level names the accepted ones.

// truthRules: the shipped defaults (may, upgrade encrypt), and a
// destination whose rule ignores pins.
const truthRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: optout.test
    upgrade: none
`

// pinStatusJSON is a pin as `pins list -json` shows it, with its cap.
type pinStatusJSON struct {
	pinJSON
	Capped *struct {
		Pinned   string `json:"pinned"`
		Answered string `json:"answered"`
		Upgrade  string `json:"upgrade"`
		Rule     string `json:"rule"`
		Note     string `json:"note"`
	} `json:"capped"`
}

// pinStatuses runs `pins list -json` and returns the pins by destination.
func pinStatuses(t *testing.T, config string) map[string]pinStatusJSON {
	t.Helper()
	code, out, errOut := runTool(t, "pins", "-config", config, "list", "-json")
	if code != 0 {
		t.Fatalf("tlspolicyd pins list -json: exit %d, stderr %q", code, errOut)
	}
	var list []pinStatusJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("tlspolicyd pins list -json: not a JSON list of pins: %v\n%s", err, out)
	}
	m := map[string]pinStatusJSON{}
	for _, p := range list {
		m[p.Destination] = p
	}
	return m
}

func TestPinsSayTheTruth(t *testing.T) {
	t.Parallel()
	statePath := filepath.Join(t.TempDir(), "state.db")
	template := withState(t, listenInet+hermetic+"probe:\n  wait: 1s\n"+truthRules, statePath)
	d := startDaemon(t, template)
	config := d.configPath
	table := d.socketmap(t, "tlspolicy")
	capLine := lineOf(t, template, "  upgrade: encrypt")
	noneLine := lineOf(t, template, "    upgrade: none")
	capped := fmt.Sprintf("pinned verify, answered encrypt: capped by upgrade: encrypt at %s:%d", config, capLine)
	pins := func(args ...string) (int, string, string) {
		t.Helper()
		code, out, errOut := runTool(t, append([]string{"pins", "-config", config}, args...)...)
		t.Logf("tlspolicyd pins %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		return code, out, errOut
	}

	// The README's example: accepted, and it says what is answered.
	code, out, _ := pins("add", "partner.test", "verify")
	if code != 0 || !strings.Contains(out, "pinned partner.test at verify") || !strings.Contains(out, capped) ||
		!strings.Contains(out, "through the daemon") {
		t.Errorf("pins add partner.test verify: exit %d, output %q; want exit 0, the pin, %q, and that it went through the daemon", code, out, capped)
	}
	checkLookup(t, table, lookup{key: "partner.test", want: encrypt}, "")

	code, out, _ = pins("list")
	if row, ok := findLine(out, "partner.test", "verify"); code != 0 || !ok || !strings.Contains(row, "encrypt (capped)") {
		t.Errorf("pins list: exit %d, row of partner.test %q; want verify answered \"encrypt (capped)\"", code, row)
	}
	if !strings.Contains(out, "partner.test: "+capped) {
		t.Errorf("pins list does not explain the cap (%q):\n%s", capped, out)
	}
	p := pinStatuses(t, config)["partner.test"]
	if p.Level != "verify" || p.Capped == nil || p.Capped.Answered != "encrypt" || p.Capped.Upgrade != "encrypt" ||
		p.Capped.Rule != fmt.Sprintf("%s:%d", config, capLine) || !strings.HasPrefix(p.Capped.Note, capped) {
		t.Errorf("pins list -json: partner.test = %+v, capped %+v; want verify, capped at encrypt by %s:%d", p.pinJSON, p.Capped, config, capLine)
	}

	code, out, _ = runTool(t, "query", "-config", config, "partner.test")
	t.Logf("tlspolicyd query partner.test: exit %d\n%s", code, out)
	if code != 0 || !strings.HasPrefix(out, "partner.test: "+encrypt+"\n") || !strings.Contains(out, capped) {
		t.Errorf("query partner.test: exit %d; want %q first and %q in why:\n%s", code, encrypt, capped, out)
	}

	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	_, body, err := httpGet(client, "http://"+d.http+"/api/v1/destinations/partner.test")
	var view struct {
		Level string         `json:"level"`
		Why   string         `json:"why"`
		Pin   *pinStatusJSON `json:"pin"`
	}
	if err != nil || json.Unmarshal([]byte(body), &view) != nil || view.Level != "encrypt" || view.Pin == nil ||
		view.Pin.Capped == nil || view.Pin.Capped.Answered != "encrypt" || !strings.Contains(view.Why, capped) {
		t.Errorf("GET /api/v1/destinations/partner.test: %v\n%s\nwant level encrypt, pin.capped and the cap in why", err, body)
	}
	if _, page, err := httpGet(client, "http://"+d.http+"/d/partner.test"); err != nil || !strings.Contains(page, "capped by upgrade: encrypt") {
		t.Errorf("GET /d/partner.test does not say the pin is capped (%v)", err)
	}

	// Lowering needs -force, and says what the pin is.
	code, _, errOut := pins("add", "partner.test", "encrypt")
	if code != 1 || !strings.Contains(errOut, "partner.test is pinned at verify") || !strings.Contains(errOut, "tlspolicyd pins add -force partner.test encrypt") {
		t.Errorf("pins add partner.test encrypt over verify: exit %d, stderr %q; want exit 1 naming the verify pin and -force", code, errOut)
	}
	if p := pinStatuses(t, config)["partner.test"]; p.Level != "verify" {
		t.Errorf("the refused pins add lowered the pin to %q", p.Level)
	}
	for _, level := range []string{"secure", "verfy"} {
		if code, _, errOut := pins("add", "partner.test", level); code != 1 || !strings.Contains(errOut, "a pin is encrypt or verify") {
			t.Errorf("pins add partner.test %s: exit %d, stderr %q; want exit 1 naming encrypt and verify", level, code, errOut)
		}
	}
	if code, out, _ := pins("add", "-force", "partner.test", "encrypt"); code != 0 || !strings.Contains(out, "pinned partner.test at encrypt") || strings.Contains(out, "capped") {
		t.Errorf("pins add -force partner.test encrypt: exit %d, %q; want exit 0, not capped", code, out)
	}
	if p := pinStatuses(t, config)["partner.test"]; p.Level != "encrypt" || p.Capped != nil {
		t.Errorf("after -force: partner.test = %+v, capped %+v; want encrypt, not capped", p.pinJSON, p.Capped)
	}
	if _, ok := findLine(d.logText(), "level=WARN", "pin lowered by administrator", "destination=partner.test", "previous_level=verify"); !ok {
		t.Errorf("the daemon did not warn of the forced lowering (\"pin lowered by administrator\", previous_level=verify)")
	}
	checkLookup(t, table, lookup{key: "partner.test", want: encrypt}, "")

	// upgrade: none ignores pins, and says where.
	wantNone := fmt.Sprintf("pinned encrypt, answered may: capped by upgrade: none at %s:%d", config, noneLine)
	if code, out, _ := pins("add", "optout.test", "encrypt"); code != 0 || !strings.Contains(out, wantNone) {
		t.Errorf("pins add optout.test encrypt: exit %d, %q; want %q", code, out, wantNone)
	}
	checkLookup(t, table, lookup{key: "optout.test", want: may}, "")

	// The same on the store file, with the daemon stopped.
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("daemon exited %d after SIGTERM, want 0", code)
	}
	code, out, _ = pins("add", "other.test", "verify")
	if code != 0 || !strings.Contains(out, "in "+statePath) || !strings.Contains(out, "pinned verify, answered encrypt: capped by upgrade: encrypt at") {
		t.Errorf("offline pins add other.test verify: exit %d, %q; want the cap and the file it went to (%s)", code, out, statePath)
	}
	if code, _, errOut := pins("add", "other.test", "encrypt"); code != 1 || !strings.Contains(errOut, "other.test is pinned at verify") {
		t.Errorf("offline pins add other.test encrypt: exit %d, stderr %q; want exit 1 naming the verify pin", code, errOut)
	}
	if code, _, _ := pins("add", "-force", "other.test", "encrypt"); code != 0 {
		t.Errorf("offline pins add -force other.test encrypt: exit %d, want 0", code)
	}
	offline := pinStatuses(t, config)
	if p := offline["other.test"]; p.Level != "encrypt" || p.Capped != nil {
		t.Errorf("offline: other.test = %+v, capped %+v; want encrypt, not capped", p.pinJSON, p.Capped)
	}
	if p := offline["optout.test"]; p.Capped == nil || p.Capped.Upgrade != "none" {
		t.Errorf("offline: optout.test capped %+v, want capped by upgrade: none", p.Capped)
	}
}
