package acceptance

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// sharedMXConfig is the daemon configuration of the shared-MX tests:
// probeConfig's, with upgrade verify and probe.ttl ttl.
func sharedMXConfig(t *testing.T, w *world, ttl time.Duration) string {
	t.Helper()
	config := w.probeConfig(t, "defaults:\n  level: may\n  upgrade: verify\n")
	return strings.Replace(config, "\n  wait: ", fmt.Sprintf("\n  ttl: %s\n  wait: ", ttl), 1)
}

// askAll looks every key up on conns socketmap connections until each
// answers what want says it should end at, and returns the answers.
func askAll(t *testing.T, addr string, keys []string, conns int, done func(key, answer string) bool) map[string]string {
	t.Helper()
	var mu sync.Mutex
	got := map[string]string{}
	var wg sync.WaitGroup
	for c := range conns {
		wg.Go(func() {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			for i := c; i < len(keys); i += conns {
				deadline := time.Now().Add(probeSettle)
				for {
					conn.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := conn.Write([]byte(netstring("tlspolicy " + keys[i]))); err != nil {
						t.Error(err)
						return
					}
					a, err := readNetstring(r, 10000)
					if err != nil {
						t.Error(err)
						return
					}
					if done(keys[i], a) || time.Now().After(deadline) {
						mu.Lock()
						got[keys[i]] = a
						mu.Unlock()
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	return got
}

// TestSharedMXHost drives the built daemon with 1,000 never-seen domains
// whose mail one provider's MX host takes, as the large hosted-mail
// providers take most of the world's: every domain is verified, and the
// host sees at most three connections, not a thousand. Every tenth domain
// also names a second MX host without STARTTLS: those answer the floor
// (every MX must do TLS for an upgrade), and that host too is asked about
// once for all of them.
func TestSharedMXHost(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	quiet := func(string, ...any) {}
	w.startMX(t,
		mxHost{"provider.test", "mx.provider.test", "127.0.31.1",
			fakemx.Options{Hostname: "mx.provider.test", TLS: w.verifiedTLS(t, "mx.provider.test"), Logf: quiet}},
		mxHost{"plain.test", "mx.plain.test", "127.0.31.2", fakemx.Options{Logf: quiet}},
	)
	var keys, plain []string
	for i := range 1000 {
		name := fmt.Sprintf("d%04d.shared.test", i)
		w.dns.AddMX(name, 10, "mx.provider.test")
		if i%10 == 0 {
			w.dns.AddMX(name, 20, "mx.plain.test")
			plain = append(plain, name)
		}
		keys = append(keys, name)
	}
	d := startDaemon(t, sharedMXConfig(t, w, time.Hour))
	addr := d.listen["socketmap"]
	// Until its probe is in, a domain answers the floor; then verify, or
	// the floor for good: the metric says when every probe is done, and
	// the floor's domains are asked again then.
	isPlain := map[string]bool{}
	for _, k := range plain {
		isPlain[k] = true
	}
	got := askAll(t, addr, keys, 32, func(key, a string) bool { return a == "OK "+verify || isPlain[key] })
	waitMetric(t, d, "tlspolicyd_probes_total", nil, 1000, probeSettle)
	for k, a := range askAll(t, addr, plain, 4, func(string, string) bool { return true }) {
		got[k] = a
	}
	for i, k := range keys {
		want := "OK " + verify
		if i%10 == 0 {
			want = "OK " + may
		}
		if got[k] != want {
			t.Errorf("%s: %q, want %q", k, got[k], want)
		}
	}
	for host, limit := range map[string]int{"mx.provider.test": 3, "mx.plain.test": 3} {
		if n := w.server(t, host).Stats().Connections; n > limit || n == 0 {
			t.Errorf("%s saw %d connections for the domains it serves, want 1 to %d", host, n, limit)
		}
	}
	if n := d.metric(t, "tlspolicyd_host_results_total", map[string]string{"source": "shared"}); n < 1000 {
		t.Errorf("tlspolicyd_host_results_total{source=shared} = %v, want at least 1000 (1,100 host results, a few probed)", n)
	}
	if n := d.metric(t, "tlspolicyd_probes_shared_total", nil); n < 997 {
		t.Errorf("tlspolicyd_probes_shared_total = %v, want at least 997 (every domain but those whose probe connected)", n)
	}
	if n := d.metric(t, "tlspolicyd_hosts_known", nil); n != 2 {
		t.Errorf("tlspolicyd_hosts_known = %v, want 2", n)
	}
	// The status page's JSON says which host results an answer came from,
	// and when each host was probed.
	var v struct {
		MX []struct {
			Host     string    `json:"host"`
			ProbedAt time.Time `json:"probed_at"`
		} `json:"mx"`
	}
	if err := json.Unmarshal([]byte(d.get(t, "/api/v1/destinations/d0000.shared.test", nil)), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.MX) != 2 || v.MX[0].Host != "mx.provider.test" || v.MX[1].Host != "mx.plain.test" || v.MX[0].ProbedAt.IsZero() {
		t.Errorf("API mx of d0000.shared.test: %+v, want mx.provider.test and mx.plain.test, each with probed_at", v.MX)
	}
}

// TestSharedMXCertificateChange: a host's new certificate is seen by every
// domain it serves once the host's result is due (three quarters of
// probe.ttl), with one new connection to the host for all of them.
func TestSharedMXCertificateChange(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	var cert atomic.Pointer[tls.Certificate]
	first := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.renew.test"}, NotAfter: time.Now().Add(24 * time.Hour).Truncate(time.Second)})
	cert.Store(&first)
	w.startMX(t, mxHost{"renew.test", "mx.renew.test", "127.0.31.3", fakemx.Options{Logf: func(string, ...any) {},
		TLS: &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Load(), nil }}}})
	keys := []string{"a.renew.test", "b.renew.test", "c.renew.test"}
	for _, k := range keys {
		w.dns.AddMX(k, 10, "mx.renew.test")
	}
	const ttl = 4 * time.Second
	d := startDaemon(t, sharedMXConfig(t, w, ttl))
	askAll(t, d.listen["socketmap"], keys, 3, func(_, a string) bool { return a == "OK "+verify })
	notAfter := func(key string) time.Time {
		var v struct {
			MX []struct {
				Certificate *struct {
					NotAfter time.Time `json:"not_after"`
				} `json:"certificate"`
			} `json:"mx"`
		}
		if err := json.Unmarshal([]byte(d.get(t, "/api/v1/destinations/"+key, nil)), &v); err != nil {
			t.Fatal(err)
		}
		if len(v.MX) != 1 || v.MX[0].Certificate == nil {
			return time.Time{}
		}
		return v.MX[0].Certificate.NotAfter
	}
	for _, k := range keys {
		if got := notAfter(k); !got.Equal(first.Leaf.NotAfter) {
			t.Fatalf("%s: certificate not after %v, want the first certificate's %v", k, got, first.Leaf.NotAfter)
		}
	}
	if n := w.server(t, "mx.renew.test").Stats().Connections; n != 1 {
		t.Errorf("mx.renew.test saw %d connections for three domains, want 1", n)
	}

	second := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.renew.test"}, NotAfter: time.Now().Add(48 * time.Hour).Truncate(time.Second)})
	cert.Store(&second)
	changed := time.Now()
	for _, k := range keys {
		eventually(t, ttl+probeSettle, k+" shows the new certificate", func() (bool, string) {
			// A lookup: the refresh of a domain in use starts with it.
			askAll(t, d.listen["socketmap"], []string{k}, 1, func(string, string) bool { return true })
			got := notAfter(k)
			return got.Equal(second.Leaf.NotAfter), fmt.Sprintf("not after %v", got)
		})
	}
	if took := time.Since(changed); took > ttl+probeSettle {
		t.Errorf("the new certificate took %v to reach every domain, want within the TTL (%v) and a probe", took, ttl)
	}
	if n := w.server(t, "mx.renew.test").Stats().Connections; n > 3 {
		t.Errorf("mx.renew.test saw %d connections in all, want at most 3 (one per TTL window, not one per domain)", n)
	}
}
