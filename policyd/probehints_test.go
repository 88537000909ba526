package policyd

import (
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

func TestBracketed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		destination, want string
	}{
		{"127.0.0.1:2526", "[127.0.0.1]:2526"},
		{"192.0.2.1", "[192.0.2.1]"},
		{"[127.0.0.1]:2526", ""},
		{"example.org", ""},
		{"mx.example.org:587", ""},
	} {
		target, err := Target(tc.destination)
		if err != nil {
			t.Fatalf("Target(%s): %v", tc.destination, err)
		}
		got, ok := Bracketed(target)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Bracketed(%s) = %q, %v; want %q", tc.destination, got, ok, tc.want)
		}
	}
	if got, _ := Bracketed(tlsprobe.Target{Name: "2001:db8::1"}); got != "[ipv6:2001:db8::1]" {
		t.Errorf("an IPv6 address: %q, want [ipv6:2001:db8::1]", got)
	}
}

func TestProbeBelowPin(t *testing.T) {
	t.Parallel()
	now := time.Now()
	verify := pinAt("partner.test", "verify")
	for _, tc := range []struct {
		name string
		pin  state.Pin
		r    tlsprobe.Report
		want bool
	}{
		{"plaintext under a verify pin", verify, result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS), true},
		{"encrypt under a verify pin", verify, result(tlsprobe.CapEncrypt, tlsprobe.CauseUnknownAuthority), true},
		{"verify confirms it", verify, result(tlsprobe.CapVerify, tlsprobe.CauseNone), false},
		{"a failed probe shows nothing", verify, tlsprobe.Report{Cause: tlsprobe.CauseTimeout}, false},
		{"an expired pin", state.Pin{Key: "partner.test", Level: "verify", Expires: now.Add(-time.Second)},
			result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS), false},
	} {
		if got := ProbeBelowPin(tc.pin, tc.r, now); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
