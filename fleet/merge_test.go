package fleet

import (
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func pin(level string, seen time.Time, ttl time.Duration) *state.Pin {
	return &state.Pin{Key: "example.org", Level: level, FirstSeen: seen, LastSeen: seen, Expires: seen.Add(ttl), Source: "probe"}
}

// TestMerge: the merge rule of pins, and that it gives the same record
// whatever the order copies meet in.
func TestMerge(t *testing.T) {
	t.Parallel()
	now := t0.Add(time.Hour)
	day := 24 * time.Hour
	verifyOld := pin("verify", t0, day)
	encryptNew := pin("encrypt", t0.Add(30*time.Minute), day)
	encryptLater := pin("encrypt", t0.Add(40*time.Minute), day)
	verifyExpired := pin("verify", t0.Add(-2*day), day)
	removedAt := t0.Add(10 * time.Minute)
	for _, tc := range []struct {
		name string
		a, b Record
		want *state.Pin // in force
	}{
		{"stronger level wins over a later one", Record{Verify: verifyOld}, Record{Encrypt: encryptNew}, verifyOld},
		{"same level: the later", Record{Encrypt: encryptNew}, Record{Encrypt: encryptLater}, encryptLater},
		{"a pin in force beats an expired stronger one", Record{Verify: verifyExpired}, Record{Encrypt: encryptNew}, encryptNew},
		{"a missing copy lowers nothing", Record{Verify: verifyOld}, Record{}, verifyOld},
		{"a removal beats pins confirmed before it", Record{Verify: verifyOld}, Record{Removed: removedAt}, nil},
		{"a pin confirmed after a removal stands", Record{Encrypt: encryptNew}, Record{Removed: removedAt}, encryptNew},
		{"a stale daemon's pin does not come back", Record{Removed: removedAt}, Record{Verify: verifyOld}, nil},
		{"of a removed verify and a later encrypt, the encrypt", Record{Verify: verifyOld, Encrypt: encryptNew},
			Record{Removed: removedAt}, encryptNew},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ab, ba := Merge(tc.a, tc.b), Merge(tc.b, tc.a)
			if !Same(ab, ba) {
				t.Errorf("not commutative: %+v vs %+v", ab, ba)
			}
			if !Same(Merge(ab, tc.a), ab) || !Same(Merge(ab, ab), ab) {
				t.Errorf("not idempotent: %+v", ab)
			}
			if got := ab.Effective(now); !samePin(got, tc.want) {
				t.Errorf("in force: %+v, want %+v", got, tc.want)
			}
		})
	}
	// Associative: three copies in every order agree; a removal between
	// two confirmations keeps the later one.
	rs := []Record{{Verify: verifyOld}, {Encrypt: encryptLater}, {Removed: t0.Add(35 * time.Minute)}}
	want := Merge(Merge(rs[0], rs[1]), rs[2])
	for _, order := range [][3]int{{0, 2, 1}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}, {1, 0, 2}} {
		got := Merge(Merge(rs[order[0]], rs[order[1]]), rs[order[2]])
		if !Same(got, want) {
			t.Errorf("order %v: %+v, want %+v", order, got, want)
		}
	}
	if p := want.Effective(now); !samePin(p, encryptLater) {
		t.Errorf("three copies: in force %+v; want the encrypt pin confirmed after the removal", p)
	}
	// The pin book's rule.
	if !Beats(*verifyOld, *encryptLater, now) || Beats(*verifyExpired, *encryptNew, now) || !Beats(*encryptLater, *encryptNew, now) {
		t.Error("Beats: want verify over encrypt, a valid pin over an expired one, the later expiry")
	}
}

// TestCodec: values round-trip; what is too large, empty or foreign is
// refused, never a panic.
func TestCodec(t *testing.T) {
	t.Parallel()
	m := message{kind: kindFindings, node: "0123456789abcdef", key: "[mx.example.org]:2525", value: encodeFindings(t0, []byte{1, 2, 3})}
	got, err := decodeMessage(string(m.encode()))
	if err != nil || got.kind != m.kind || got.node != m.node || got.key != m.key || string(got.value) != string(m.value) {
		t.Fatalf("decodeMessage(encode(%+v)) = %+v, %v", m, got, err)
	}
	v, data, err := decodeFindings(got.value)
	if err != nil || !v.Equal(t0) || string(data) != "\x01\x02\x03" {
		t.Errorf("decodeFindings = %v %v %v", v, data, err)
	}
	r := Record{Verify: pin("verify", t0, time.Hour)}
	if back, err := decodeRecord("example.org", encodeRecord(r)); err != nil || !Same(back, r) {
		t.Errorf("decodeRecord(encodeRecord) = %+v, %v", back, err)
	}
	for _, bad := range []struct {
		what string
		err  error
	}{
		{"record of another key", func() error { _, err := decodeRecord("other.org", encodeRecord(r)); return err }()},
		{"record of a level no pin has", func() error {
			_, err := decodeRecord("example.org", []byte(`{"verify":{"destination":"example.org","level":"none"}}`))
			return err
		}()},
		{"empty record", func() error { _, err := decodeRecord("example.org", []byte(`{}`)); return err }()},
		{"huge record", func() error { _, err := decodeRecord("example.org", make([]byte, maxPinValue+1)); return err }()},
		{"short findings", func() error { _, _, err := decodeFindings([]byte{1, 2}); return err }()},
		{"huge findings", func() error { _, _, err := decodeFindings(make([]byte, maxFindings+9)); return err }()},
		{"short message", func() error { _, err := decodeMessage("p0123"); return err }()},
		{"message of an unknown kind", func() error {
			_, err := decodeMessage(string(message{kind: 'x', node: m.node, key: "k", value: []byte("v")}.encode()))
			return err
		}()},
		{"message with a key longer than itself", func() error { _, err := decodeMessage("p0123456789abcdef\x7fabc"); return err }()},
	} {
		if bad.err == nil {
			t.Errorf("%s: accepted", bad.what)
		}
	}
}

// FuzzDecodeMessage: no message from Redis crashes the daemon.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(string(message{kind: kindPin, node: "0123456789abcdef", key: "example.org", value: encodeRecord(Record{Removed: t0})}.encode()))
	f.Add("f0123456789abcdef\x00")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := decodeMessage(s)
		if err != nil {
			return
		}
		if m.kind == kindPin {
			decodeRecord(m.key, m.value)
		} else {
			decodeFindings(m.value)
		}
	})
}
