package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestBoltRoundTrip(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "state.db") // the directory is created
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	pins := []Pin{
		{Key: "example.org", Level: "verify", FirstSeen: now, LastSeen: now, Expires: now.Add(time.Hour), Source: "probe"},
		{Key: "[mx.example.net]:2525", Level: "encrypt", FirstSeen: now, LastSeen: now, Expires: now.Add(time.Hour), Source: "admin",
			LastDowngrade: now, DowngradeReason: "no STARTTLS at mx.example.net"},
	}
	if err := s.PutPins(pins...); err != nil {
		t.Fatal(err)
	}
	if err := s.PutProbes(Probe{Key: "example.org", Expires: now.Add(time.Hour), Findings: []byte("findings")}); err != nil {
		t.Fatal(err)
	}
	if found, err := s.DeletePin("nothing.test"); found || err != nil {
		t.Errorf("DeletePin of a missing pin = %v, %v", found, err)
	}
	if s.Size() <= 0 {
		t.Error("Size reports nothing")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Pins()
	if err != nil {
		t.Fatal(err)
	}
	probes := allProbes(t, s, now)
	if len(got) != 2 || len(probes) != 1 || probes[0] != "example.org=findings" {
		t.Fatalf("after reopening: pins %+v probes %q", got, probes)
	}
	byKey := map[string]Pin{}
	for _, p := range got {
		byKey[p.Key] = p
	}
	for _, want := range pins {
		p := byKey[want.Key]
		if p.Level != want.Level || !p.Expires.Equal(want.Expires) || p.Source != want.Source ||
			p.DowngradeReason != want.DowngradeReason || !p.LastDowngrade.Equal(want.LastDowngrade) {
			t.Errorf("pin %s = %+v, want %+v", want.Key, p, want)
		}
	}
	if found, err := s.DeletePin("example.org"); !found || err != nil {
		t.Errorf("DeletePin = %v, %v", found, err)
	}
	if got, _ := s.Pins(); len(got) != 1 {
		t.Errorf("after delete: %+v", got)
	}
}

func TestBoltLockedByAnotherOpener(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// bbolt's lock is a flock on the file: a second open, even in this
	// process, waits for it like another daemon would.
	if _, err := OpenBolt(path, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Errorf("second open = %v, want ErrLocked", err)
	}
}

func TestBoltCorrupt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(garbage, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(garbage, time.Second); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), garbage) {
		t.Errorf("garbage file: %v, want ErrCorrupt naming the file", err)
	}

	// A valid store with a pin that does not decode: Load refuses rather
	// than starting without it.
	path := filepath.Join(dir, "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutPins(Pin{Key: "ok.test", Level: "encrypt"}); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPins).Put([]byte("bad.test"), []byte("{not json")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pins(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `pin "bad.test" does not decode`) {
		t.Errorf("undecodable pin: %v, want ErrCorrupt naming the pin", err)
	}
}

func TestPinValid(t *testing.T) {
	t.Parallel()
	now := time.Now()
	if !(Pin{Expires: now.Add(time.Second)}).Valid(now) || (Pin{Expires: now}).Valid(now) {
		t.Error("Valid: a pin is in force strictly before it expires")
	}
}
