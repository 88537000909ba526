package monoclock

import (
	"testing"
	"time"
)

// A clock made from an injected now follows it, and places other times
// on the same scale.
func TestInjected(t *testing.T) {
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	c := New(func() time.Time { return now })
	if got := c.Now(); got != 0 {
		t.Fatalf("Now at start = %v, want 0", got)
	}
	now = now.Add(90 * time.Second)
	if got := c.Now(); got != 90*time.Second {
		t.Errorf("Now after 90s = %v, want 1m30s", got)
	}
	if got := c.At(now.Add(time.Hour)); got != time.Hour+90*time.Second {
		t.Errorf("At(an hour from now) = %v, want 1h1m30s", got)
	}
}

// The system clock's offsets grow, and a wall time read from a file
// (no monotonic reading) lands where the wall clock puts it.
func TestSystem(t *testing.T) {
	c := New(nil)
	a := c.Now()
	time.Sleep(time.Millisecond)
	if b := c.Now(); b <= a {
		t.Errorf("Now went from %v to %v, want it to grow", a, b)
	}
	wall := time.Now().Add(time.Hour).Round(0) // Round(0) drops the monotonic reading
	if got := c.At(wall); got < 59*time.Minute || got > 61*time.Minute {
		t.Errorf("At(an hour from now, wall only) = %v, want about 1h", got)
	}
}
