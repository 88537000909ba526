package policyd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// knownWorld is a daemon that knows n destinations, each probed with a
// verified MX host whose certificate expires in 20 days, and has answered
// for them (so they have history).
func knownWorld(tb testing.TB, n int) *Daemon {
	tb.Helper()
	d := newTestDaemon(tb, mustLoad(tb, "mtasts: {enabled: false}\ndefaults: {level: may, upgrade: verify}\ndestinations:\n  - {match: never.test, level: verify}\n"))
	now := time.Now()
	for i := range n {
		name := fmt.Sprintf("d%06d.test", i)
		d.cache.Restore(name, Findings{Probe: tlsprobe.Report{
			Target: tlsprobe.Target{Name: name}, Capability: tlsprobe.CapVerify, ProbedAt: now,
			Hosts: []tlsprobe.HostReport{{Host: "mx." + name, Addr: netip.MustParseAddrPort("192.0.2.1:25"), STARTTLS: true,
				TLSVersion: 0x0304, Cipher: 0x1301, ChainValid: true, NameValid: true, Capability: tlsprobe.CapVerify,
				Subject: "CN=mx." + name, Issuer: "CN=Test CA", NotAfter: now.Add(20 * 24 * time.Hour)}},
		}})
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	return d
}

func get(tb testing.TB, h http.Handler, path string) (int, string) {
	tb.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestStatusPages(t *testing.T) {
	t.Parallel()
	d := knownWorld(t, 150)
	h := d.httpHandler()
	code, body := get(t, h, "/")
	for _, want := range []string{"150</p>", "d000000.test", "never.test", "Certificates of required destinations expiring within 30 days", "page 1 of 2", `href="/?page=2&amp;q="`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET / = %d, missing %q", code, want)
		}
	}
	if !strings.Contains(body, "and 125 more") {
		t.Error("the expiring certificates are not bounded")
	}
	if list := destinationsTable(body); strings.Contains(list, "d000149.test") || !strings.Contains(list, "d000099.test") {
		t.Error("page 1 does not show the first 100 destinations only")
	}
	if _, body := get(t, h, "/?q=d00014&page=1"); !strings.Contains(destinationsTable(body), "d000149.test") || strings.Contains(destinationsTable(body), "d000000.test") {
		t.Error("the search does not filter the list")
	}
	code, body = get(t, h, "/d/d000007.test")
	for _, want := range []string{"verify protocols=&gt;=TLSv1.2", "mx.d000007.test", "TLSv1.3", "CN=Test CA", "raised to verify by probe"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET /d/d000007.test = %d, missing %q", code, want)
		}
	}
	if code, _ := get(t, h, "/d/.parent.test"); code != http.StatusBadRequest {
		t.Errorf("a .parent key is no destination: got %d", code)
	}
	if code, body := get(t, h, "/api/v1/destinations?limit=2"); code != 200 || strings.Count(body, `"destination":`) != 2 || !strings.Contains(body, `"tls_version":"TLSv1.3"`) {
		t.Errorf("GET /api/v1/destinations?limit=2 = %d %s", code, body)
	}
	if d.summary().expiringWithin(30) != 150 || d.summary().expiringWithin(14) != 0 {
		t.Errorf("expiring within 30 days %d, within 14 %d; want 150 and 0", d.summary().expiringWithin(30), d.summary().expiringWithin(14))
	}
}

// destinationsTable is the list section of the status page.
func destinationsTable(page string) string {
	_, list, _ := strings.Cut(page, `<section id="destinations">`)
	return list
}

// BenchmarkStatusPage100k: the status page, a destination page and an API
// page with 100,000 known destinations. The summary over all of them is
// reused for a while (reuseFor); BenchmarkSummary100k measures computing it.
func BenchmarkStatusPage100k(b *testing.B) {
	d := knownWorld(b, 100000)
	h := d.httpHandler()
	d.summary()
	for _, path := range []string{"/", "/?q=d09999&page=1", "/d/d054321.test", "/api/v1/destinations?offset=50000&limit=100", "/api/v1/destinations"} {
		if path == "/api/v1/destinations" && testing.Short() {
			continue
		}
		b.Run(strings.NewReplacer("/", "_", "?", "_").Replace(path), func(b *testing.B) {
			for b.Loop() {
				if code, _ := get(b, h, path); code != 200 {
					b.Fatal(code)
				}
			}
		})
	}
}

func BenchmarkSummary100k(b *testing.B) {
	d := knownWorld(b, 100000)
	b.ReportAllocs()
	for b.Loop() {
		d.sums.sum, d.sums.names = nil, nil
		d.summary()
	}
}
