package report

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/policyd"
)

func views(n int) []policyd.DestinationView {
	at := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	out := make([]policyd.DestinationView, n)
	for i := range out {
		name := fmt.Sprintf("d%06d.test", i)
		out[i] = policyd.DestinationView{Destination: name, Level: "verify", Answer: "verify protocols=>=TLSv1.2", Floor: "may",
			Rule: "rules.yaml:3", ProbedAt: &at,
			MX: []policyd.MXView{
				{Host: "mx1." + name, TLSVersion: "TLSv1.3", Certificate: &policyd.CertView{NotAfter: at.Add(48 * time.Hour), Valid: true, NameMatch: true}},
				{Host: "mx2." + name, TLSVersion: "TLSv1.2", Certificate: &policyd.CertView{NotAfter: at.Add(24 * time.Hour), Valid: true, NameMatch: false}},
			},
			Pin:    &policyd.PinView{Level: "verify", Expires: at.Add(720 * time.Hour)},
			MTASTS: &policyd.MTASTSView{Mode: "enforce"}, DANE: "no_dane", Downgrades30d: i % 2}
	}
	return out
}

func TestCSV(t *testing.T) {
	t.Parallel()
	r := New(views(2), time.Now(), "relay1", "rules.yaml", "abc", "daemon")
	var b bytes.Buffer
	if err := Write(&b, "csv", r); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	const header = "destination,level,answer,floor,rule,mx_hosts,tls_versions,certificates_valid,earliest_certificate_expiry,pin_level,pin_expires,mta_sts_mode,dane,last_probe,downgrades_30d"
	if got := strings.Join(rows[0], ","); got != header || len(rows) != 3 {
		t.Fatalf("header %q and %d rows", got, len(rows))
	}
	want := []string{"d000001.test", "verify", "verify protocols=>=TLSv1.2", "may", "rules.yaml:3", "mx1.d000001.test mx2.d000001.test",
		"TLSv1.3 TLSv1.2", "false", "2026-12-05T12:00:00Z", "verify", "2027-01-03T12:00:00Z", "enforce", "no_dane", "2026-12-04T12:00:00Z", "1"}
	if got := rows[2]; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("row\n got %q\nwant %q", got, want)
	}
}

func TestJSONAndHTML(t *testing.T) {
	t.Parallel()
	r := New(views(3), time.Date(2026, 12, 4, 13, 0, 0, 0, time.UTC), "relay1", "/etc/tlspolicyd/rules.yaml", "5f2b", "state file")
	var b bytes.Buffer
	if err := Write(&b, "json", r); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Destinations) != 3 || back.Totals["verify"] != 3 || back.ConfigSHA256 != "5f2b" {
		t.Errorf("JSON round trip: %v %+v", err, back.Totals)
	}
	if !strings.Contains(b.String(), `"answer": "verify protocols=>=TLSv1.2"`) {
		t.Error("JSON escapes > in policies")
	}
	b.Reset()
	if err := Write(&b, "html", r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<!DOCTYPE html>", "2026-12-04T13:00:00Z", "relay1", "/etc/tlspolicyd/rules.yaml", "5f2b", "d000002.test", "state file"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
	if err := Write(&b, "pdf", r); err == nil {
		t.Error("an unknown format is accepted")
	}
}

// TestJSONEmpty: a report of no destinations lists them as [], not null.
func TestJSONEmpty(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	if err := Write(&b, "json", New(nil, time.Now(), "relay1", "rules.yaml", "abc", "state file")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"destinations": []`) {
		t.Errorf("report of nothing:\n%s\nwant \"destinations\": []", b.String())
	}
}

// BenchmarkReport100k renders a report of 100,000 destinations in each
// format.
func BenchmarkReport100k(b *testing.B) {
	r := New(views(100000), time.Now(), "relay1", "rules.yaml", "abc", "daemon")
	for _, format := range []string{"csv", "json", "html"} {
		b.Run(format, func(b *testing.B) {
			b.ReportAllocs()
			var size int
			for b.Loop() {
				var buf bytes.Buffer
				if err := Write(&buf, format, r); err != nil {
					b.Fatal(err)
				}
				size = buf.Len()
			}
			b.ReportMetric(float64(size)/1e6, "MB")
		})
	}
}
