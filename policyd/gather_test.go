package policyd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// stsResolver publishes an MTA-STS record for sts.test and the address of
// its policy host; every other lookup fails at once.
type stsResolver struct{ offlineResolver }

func (stsResolver) LookupTXT(_ context.Context, name string) ([]string, time.Duration, error) {
	if name == "_mta-sts.sts.test" {
		return []string{"v=STSv1; id=20261205"}, time.Hour, nil
	}
	return nil, 0, &dnsclient.Error{Name: name, Qtype: "TXT", Kind: dnsclient.ErrOther, Err: errors.New("offline test")}
}

func (r stsResolver) LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if host == "mta-sts.sts.test" {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return r.offlineResolver.LookupAddrs(ctx, host)
}

// The gatherer's findings keep the answer of the MTA-STS policy they hold
// once rendered, as findings read back from the state file do
// (TestLookupTableSTSAllocs): a lookup they answer allocates nothing.
func TestGatherKeepsSTSAnswer(t *testing.T) {
	ca := testca.MustNew(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mta-sts.sts.test"}})}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile, err := ca.WritePEM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := mustLoad(t, fmt.Sprintf("defaults: {level: may, upgrade: encrypt}\nmtasts: {enabled: true, ca_file: %q}\nprobe: {allow_private: true}\n", caFile))
	// Every connection goes to the policy host (the MX lookup fails, so
	// the probe dials nothing).
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}
	g, err := NewGatherer(p.Settings, ProbeDeps{Resolver: stsResolver{}, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	target := tlsprobe.Target{Name: "sts.test"}
	f := g.Gather(context.Background(), target, Findings{})
	if f.STS == nil || f.STS.Mode != mtasts.ModeEnforce {
		t.Fatalf("gathered MTA-STS policy %v (%s), want the enforced one published", f.STS, f.STSNote)
	}

	c := tlsprobe.NewCache(func(context.Context, tlsprobe.Target, Findings) Findings { return f },
		tlsprobe.CacheConfig{TTL: time.Hour, NegativeTTL: time.Minute}, nil)
	t.Cleanup(c.Close)
	c.Probe(context.Background(), target)
	e := NewEngine(p, c)
	ctx, key := context.Background(), []byte("sts.test")
	if a := e.LookupTable(ctx, "tlspolicy", key); !strings.HasPrefix(a.Text, "secure match=mx.sts.test") {
		t.Fatalf("answer %q, want the MTA-STS policy's", a.Text)
	}
	if allocs := testing.AllocsPerRun(100, func() { e.LookupTable(ctx, "tlspolicy", key) }); allocs != 0 {
		t.Errorf("a lookup answered by the gathered MTA-STS policy allocates %v times, want 0", allocs)
	}
}
