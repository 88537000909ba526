package policyd

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
)

// capRules: the defaults cap evidence at encrypt (line 3); own.test sets
// its own cap (line 6), inherits.test takes the defaults' (rule at line
// 7), allows.test lets pins reach verify, floor.test needs no pin.
const capRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: own.test
    upgrade: none
  - match: inherits.test
    level: may
  - match: allows.test
    upgrade: verify
  - match: floor.test
    level: verify
`

func pinAt(key, level string) state.Pin {
	now := time.Now()
	return state.Pin{Key: key, Level: level, FirstSeen: now, LastSeen: now, Expires: now.Add(time.Hour), Source: "admin"}
}

// TestCapOfPin: a pin above what the rule's upgrade allows says what is
// answered instead, which setting caps it, at which line, and what to
// change; a pin the rules let answer its level says nothing.
func TestCapOfPin(t *testing.T) {
	t.Parallel()
	rs := mustLoad(t, capRules)
	tests := []struct {
		key, level string
		want       *PinCap // Note: a part of it
	}{
		{"unknown.test", "verify", &PinCap{Pinned: "verify", Answered: "encrypt", Upgrade: "encrypt", Rule: "test.yaml:3",
			Note: "pinned verify, answered encrypt: capped by upgrade: encrypt at test.yaml:3; to answer verify, add a destination rule for unknown.test with upgrade: verify"}},
		{"own.test", "encrypt", &PinCap{Pinned: "encrypt", Answered: "may", Upgrade: "none", Rule: "test.yaml:6",
			Note: "pinned encrypt, answered may: capped by upgrade: none at test.yaml:6; to answer encrypt, set upgrade: encrypt there"}},
		{"inherits.test", "verify", &PinCap{Pinned: "verify", Answered: "encrypt", Upgrade: "encrypt", Rule: "test.yaml:3",
			Note: "capped by upgrade: encrypt at test.yaml:3; to answer verify, add upgrade: verify to its rule at test.yaml:7"}},
		{"unknown.test", "encrypt", nil},
		{"allows.test", "verify", nil},
		{"floor.test", "verify", nil},
	}
	for _, tc := range tests {
		got := CapOfPin(rs, pinAt(tc.key, tc.level))
		switch {
		case tc.want == nil && got != nil:
			t.Errorf("%s pinned %s: capped %+v, want not capped", tc.key, tc.level, got)
		case tc.want == nil:
		case got == nil:
			t.Errorf("%s pinned %s: not capped, want %+v", tc.key, tc.level, tc.want)
		case got.Pinned != tc.want.Pinned || got.Answered != tc.want.Answered || got.Upgrade != tc.want.Upgrade ||
			got.Rule != tc.want.Rule || !strings.Contains(got.Note, tc.want.Note):
			t.Errorf("%s pinned %s:\n got %+v\nwant %+v", tc.key, tc.level, got, tc.want)
		}
	}

	builtin := CapOfPin(mustLoad(t, "defaults:\n  level: may\n"), pinAt("partner.test", "verify"))
	if builtin == nil || builtin.Rule != "" || !strings.Contains(builtin.Note, "capped by upgrade: encrypt (the default: test.yaml sets no defaults.upgrade)") {
		t.Errorf("capped by the built-in default upgrade: %+v", builtin)
	}
}

// TestCappedPinExplained: query's why and the API view say that the
// upgrade caps the pin.
func TestCappedPinExplained(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, capRules), &fakeFindings{})
	b, _, _ := newTestPinBook(t, nil)
	e.pins = b
	if _, _, err := b.add("partner.test", "verify", false); err != nil {
		t.Fatal(err)
	}
	const note = "pinned verify, answered encrypt: capped by upgrade: encrypt at test.yaml:3"
	d := e.Peek("partner.test")
	if d.Level.String() != "encrypt" || !strings.Contains(d.Explain(), note) {
		t.Errorf("partner.test: %s, why %q; want encrypt and %q", d.Level, d.Explain(), note)
	}
	v := e.View("partner.test")
	if v.Pin == nil || v.Pin.Capped == nil || v.Pin.Capped.Answered != "encrypt" || v.Pin.Capped.Rule != "test.yaml:3" {
		t.Fatalf("view of partner.test: pin %+v, want capped at encrypt by test.yaml:3", v.Pin)
	}
	raw, _ := json.Marshal(v)
	if !strings.Contains(string(raw), `"capped":{"pinned":"verify","answered":"encrypt","upgrade":"encrypt","rule":"test.yaml:3"`) {
		t.Errorf("JSON view: %s", raw)
	}

	if _, _, err := b.add("allows.test", "verify", false); err != nil {
		t.Fatal(err)
	}
	if v := e.View("allows.test"); v.Pin == nil || v.Pin.Capped != nil || v.Level != "verify" {
		t.Errorf("allows.test: level %s, pin %+v; want verify, not capped", v.Level, v.Pin)
	}
	if raw, _ := json.Marshal(e.View("allows.test")); !strings.Contains(string(raw), `"capped":null`) {
		t.Errorf("a pin not capped: %s, want \"capped\":null", raw)
	}
}

// TestPinLowering: an administrator's pin below the pin in force is
// refused, saying what the pin is and how to lower it; -force lowers it;
// raising or renewing needs nothing; an expired pin is no obstacle.
func TestPinLowering(t *testing.T) {
	t.Parallel()
	b, clock, _ := newTestPinBook(t, nil)
	if _, _, err := b.add("partner.test", "verify", false); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.add("partner.test", "encrypt", false)
	var lower *PinLowerError
	if !errors.As(err, &lower) || lower.Current.Level != "verify" ||
		!strings.Contains(err.Error(), "partner.test is pinned at verify") || !strings.Contains(err.Error(), "tlspolicyd pins add -force partner.test encrypt") {
		t.Fatalf("lowering without force: %v", err)
	}
	if p, _ := b.get("partner.test"); p.Level != "verify" {
		t.Errorf("the refused change lowered the pin to %s", p.Level)
	}
	if _, lowered, err := b.add("partner.test", "verify", false); err != nil || lowered != nil {
		t.Errorf("renewing at the same level: lowered %+v, %v", lowered, err)
	}
	if p, lowered, err := b.add("partner.test", "encrypt", true); err != nil || p.Level != "encrypt" || lowered == nil || lowered.Level != "verify" {
		t.Errorf("lowering with force: %+v, lowered %+v, %v; want encrypt, lowered from verify", p, lowered, err)
	}
	if _, _, err := b.add("partner.test", "verify", false); err != nil {
		t.Errorf("raising: %v", err)
	}
	clock.advance(31 * 24 * time.Hour)
	if _, _, err := b.add("partner.test", "encrypt", false); err != nil {
		t.Errorf("over an expired pin: %v", err)
	}
}

// TestPinLevelRefused: a level no pin can have names the ones it can.
func TestPinLevelRefused(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"secure", "may", "verfy", ""} {
		_, err := AdminPin("partner.test", level, time.Hour, time.Now())
		if !errors.Is(err, ErrPinLevel) || !strings.Contains(err.Error(), "a pin is encrypt or verify") {
			t.Errorf("AdminPin level %q: %v, want an error naming encrypt or verify", level, err)
		}
	}
	if _, err := AdminPin("partner.test", "secure", time.Hour, time.Now()); !strings.Contains(err.Error(), "level: secure") {
		t.Errorf("a pin at secure: %v, want the destination rule that gives it", err)
	}
}

// TestAdminPinsHTTP: PUT /admin/pins refuses to lower a pin (409) unless
// force=true, and the pins it lists and answers, and the status pages,
// say how they are capped.
func TestAdminPinsHTTP(t *testing.T) {
	t.Parallel()
	d, _ := startDaemon(t, "defaults: {level: may, upgrade: encrypt}\n")
	base := "http://" + d.Addr("http").String()
	put := func(query string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, base+"/admin/pins/partner.test?"+query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := put("level=verify"); code != http.StatusOK || !strings.Contains(body, `"answered":"encrypt"`) {
		t.Errorf("PUT level=verify: %d %s; want 200 with the cap (answered encrypt)", code, body)
	}
	if code, body := put("level=encrypt"); code != http.StatusConflict || !strings.Contains(body, "-force") {
		t.Errorf("PUT level=encrypt over verify: %d %s; want 409 saying how to force it", code, body)
	}
	if code, body := put("level=encrypt&force=true"); code != http.StatusOK || !strings.Contains(body, `"level":"encrypt"`) || !strings.Contains(body, `"capped":null`) {
		t.Errorf("PUT level=encrypt&force=true: %d %s; want 200, encrypt, not capped", code, body)
	}
	if code, body := put("level=secure"); code != http.StatusBadRequest || !strings.Contains(body, "encrypt or verify") {
		t.Errorf("PUT level=secure: %d %s; want 400 naming encrypt or verify", code, body)
	}
	put("level=verify")
	_, list := httpGet(t, base+"/admin/pins")
	var pins []PinStatus
	if err := json.Unmarshal([]byte(list), &pins); err != nil || len(pins) != 1 || pins[0].Capped == nil || pins[0].Key != "partner.test" {
		t.Errorf("GET /admin/pins: %s (%v); want partner.test, capped", list, err)
	}
	// The status page's list and the destination's page say it too.
	if _, page := httpGet(t, base+"/"); !strings.Contains(page, "(capped by upgrade: encrypt)") {
		t.Errorf("the status page's pin column does not say the pin is capped")
	}
	if _, page := httpGet(t, base+"/d/partner.test"); !strings.Contains(page, "pinned verify, answered encrypt: capped by upgrade: encrypt") {
		t.Errorf("the destination's page does not say the pin is capped")
	}
}
