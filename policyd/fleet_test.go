package policyd

import (
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// TestPinBookFromFleet: a peer's pin is taken only if it beats the one in
// memory; a peer's removal drops only a pin confirmed before it.
func TestPinBookFromFleet(t *testing.T) {
	t.Parallel()
	b, clock, _ := newTestPinBook(t, nil)
	now := clock.Now()
	pin := func(level string, at time.Time) state.Pin {
		return state.Pin{Key: "example.org", Level: level, FirstSeen: at, LastSeen: at, Expires: at.Add(30 * 24 * time.Hour), Source: "probe"}
	}
	level := func() string {
		p, ok := b.get("example.org")
		if !ok {
			return ""
		}
		return p.Level
	}
	b.merge(pin("verify", now.Add(-time.Hour)))
	if level() != "verify" {
		t.Fatalf("a peer's pin on an empty book: %q, want verify", level())
	}
	b.merge(pin("encrypt", now))
	if level() != "verify" {
		t.Errorf("a peer's later encrypt pin lowered verify to %q", level())
	}
	b.removeBefore("example.org", now.Add(-2*time.Hour))
	if level() != "verify" {
		t.Errorf("a removal older than the pin's confirmation dropped it")
	}
	b.removeBefore("example.org", now.Add(-time.Minute))
	if level() != "" {
		t.Errorf("a removal after the pin's confirmation left it: %q", level())
	}
	// Learnt from a peer's probe: confirmed at the probe's time, not now.
	b.learnAt("example.org", result(tlsprobe.CapVerify, tlsprobe.CauseNone), 0x0303, now.Add(-time.Minute), false)
	if p, ok := b.get("example.org"); !ok || !p.LastSeen.Equal(now.Add(-time.Minute)) {
		t.Errorf("learnt from a peer: %+v, %v; want confirmed a minute ago", p, ok)
	}
}

// TestFleetPinBounds: a pin from Redis that no daemon could have made (a
// key that is not a destination's, an expiry past pin_ttl) is ignored.
func TestFleetPinBounds(t *testing.T) {
	t.Parallel()
	b, clock, _ := newTestPinBook(t, nil)
	l := fleetLocal{book: b, now: clock.Now}
	now := clock.Now()
	l.MergePin(state.Pin{Key: "Not A Key!", Level: "verify", LastSeen: now, Expires: now.Add(time.Hour)})
	l.MergePin(state.Pin{Key: "forever.example", Level: "verify", LastSeen: now, Expires: now.AddDate(100, 0, 0)})
	l.MergePin(state.Pin{Key: "ok.example", Level: "verify", LastSeen: now, Expires: now.Add(time.Hour)})
	if got := len(b.list()); got != 1 {
		t.Errorf("%d pins taken, want 1 (ok.example): %+v", got, b.list())
	}
}

// TestRestartOnlyRedis: a reload that changes state.redis says a restart
// applies it (the fleet link is built once, at start).
func TestRestartOnlyRedis(t *testing.T) {
	t.Parallel()
	before := rules.Settings{Redis: rules.RedisSettings{Addrs: []string{"10.0.0.1:6379"}, KeyPrefix: "tlspolicyd:"}}
	after := before
	after.Redis.Password = "rotated"
	msgs := restartOnly(before, after)
	if len(msgs) != 1 || msgs[0] != "state.redis changed: restart to apply" {
		t.Errorf("restartOnly = %q, want state.redis changed: restart to apply", msgs)
	}
	if msgs := restartOnly(before, before); len(msgs) != 0 {
		t.Errorf("restartOnly of equal settings = %q", msgs)
	}
}
