package policyd

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// fill sets every exported field that v reaches to a value of its own that
// is not the zero value: lists get two elements, pointers a value.
func fill(v reflect.Value, n *int) {
	*n++
	switch x := v.Addr().Interface().(type) {
	case *time.Time:
		*x = time.Unix(1700000000+int64(*n), int64(*n))
		return
	case *netip.AddrPort:
		*x = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(*n)}), uint16(*n))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("s" + string(rune('a'+*n%26)) + string(rune('a'+*n/26)))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(*n))
	case reflect.Uint8:
		v.SetUint(uint64(1 + *n%3)) // enumerations (capability, cause, mode): one that has a name
	case reflect.Uint, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(*n))
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(v.Index(i), n)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	default:
		panic("fill: no value for " + v.Type().String())
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFindingsCodecKeepsEveryField: every field of Findings, and of what it
// holds, survives the state store's encoding. A field added without the
// codec learning it fails here.
func TestFindingsCodecKeepsEveryField(t *testing.T) {
	t.Parallel()
	var f Findings
	n := 0
	fill(reflect.ValueOf(&f).Elem(), &n)
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Findings
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, f), mustJSON(t, got); a != b {
		t.Errorf("decoded findings differ:\n got  %s\n want %s", b, a)
	}
	// Interning shares strings, and changes nothing else.
	var shared Findings
	if err := decodeFindings(b, &shared, map[string]string{}); err != nil || mustJSON(t, shared) != mustJSON(t, f) {
		t.Errorf("decoding with interning: %v, %s", err, mustJSON(t, shared))
	}
}

// TestFindingsCodecEdges: zero values, times outside what Unix nanoseconds
// hold, and damaged records.
func TestFindingsCodecEdges(t *testing.T) {
	t.Parallel()
	for _, f := range []Findings{
		{},
		{Probe: tlsprobe.Report{Hosts: []tlsprobe.HostReport{{NotAfter: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)}}}},
		{STS: &mtasts.Policy{}},
	} {
		b, err := f.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Findings
		if err := got.UnmarshalBinary(b); err != nil || mustJSON(t, got) != mustJSON(t, f) {
			t.Errorf("round trip of %s: %v, %s", mustJSON(t, f), err, mustJSON(t, got))
		}
		if !got.Probe.ProbedAt.IsZero() || !got.RecheckAt.IsZero() || (time.Time{}).Unix() != zeroUnix {
			t.Errorf("zero times decode as %v, %v", got.Probe.ProbedAt, got.RecheckAt)
		}
	}
	good, _ := testFindings("example.org", time.Now()).MarshalBinary()
	for name, b := range map[string][]byte{
		"empty":           nil,
		"unknown version": append([]byte{99}, good[1:]...),
		"cut short":       good[:len(good)-3],
		"left over":       append(bytes.Clone(good), 0),
		"huge count":      {findingsCodecV1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		var f Findings
		if err := f.UnmarshalBinary(b); !errors.Is(err, errFindingsCodec) {
			t.Errorf("%s: %v, want errFindingsCodec", name, err)
		}
	}
}

// testFindings are findings as a probe of two verified MX hosts of
// destination leaves them, with an MTA-STS policy.
func testFindings(destination string, at time.Time) Findings {
	host := func(name string, pref uint16) tlsprobe.HostReport {
		return tlsprobe.HostReport{Host: name, Preference: pref, Addr: netip.MustParseAddrPort("198.51.100.7:25"),
			STARTTLS: true, TLSVersion: 0x0304, Cipher: 0x1301, ChainValid: true, NameValid: true,
			NotAfter: at.Add(60 * 24 * time.Hour), Subject: "CN=" + name, Issuer: "CN=R11,O=Let's Encrypt,C=US",
			Capability: tlsprobe.CapVerify, Duration: 180 * time.Millisecond}
	}
	return Findings{
		Probe: tlsprobe.Report{Target: tlsprobe.Target{Name: destination},
			Hosts:      []tlsprobe.HostReport{host("mx1."+destination, 10), host("mx2."+destination, 20)},
			Capability: tlsprobe.CapVerify, ProbedAt: at, Duration: 420 * time.Millisecond},
		DANEDetail: "MX records not DNSSEC-validated",
		STS: &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeEnforce, MX: []string{"mx1." + destination, "mx2." + destination},
			MaxAge: 7 * 24 * time.Hour, ID: "20240101T000000", FetchedAt: at,
			Lines: []string{"version: STSv1", "mode: enforce", "mx: mx1." + destination, "mx: mx2." + destination, "max_age: 604800"}},
		STSNote:   mtasts.OutcomeFetched.String(),
		RecheckAt: at.Add(time.Hour),
	}
}

// BenchmarkFindingsDecode compares the state store's encoding of findings
// with the JSON it held before: bytes per record and decoding time.
func BenchmarkFindingsDecode(b *testing.B) {
	f := testFindings("example.org", time.Now())
	bin, _ := f.MarshalBinary()
	js, _ := json.Marshal(f)
	b.Run("binary", func(b *testing.B) {
		intern := map[string]string{}
		for b.Loop() {
			var g Findings
			if err := decodeFindings(bin, &g, intern); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "bytes/record")
	})
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			var g Findings
			if err := json.Unmarshal(js, &g); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(js)), "bytes/record")
	})
}
