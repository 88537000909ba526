package acceptance

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/redistest"
)

// Fleets (issue 15): daemons that share a Redis share pins and probes. A
// real redis-server runs on a free port, with the user and ACL of
// contrib/redis/users.acl; the daemons log in as that user.

// fleetPropagation is the promise: a pin added on one daemon
// answers on the others within this.
const fleetPropagation = 2 * time.Second

// fleetRedis is a redis-server and the state.redis block that reaches it.
type fleetRedis struct {
	srv   *redistest.Server
	block string // "  redis:\n ..." under state:
}

// startFleetRedis starts redis-server with contrib's ACL (its password
// replaced) and writes the password file the daemons read, with the
// surrounding whitespace the daemon must ignore.
func startFleetRedis(t *testing.T) *fleetRedis {
	t.Helper()
	acl, err := os.ReadFile(filepath.Join("..", "..", "contrib", "redis", "users.acl"))
	if err != nil {
		t.Fatal(err)
	}
	const placeholder, password = "CHANGE-ME-to-a-long-random-password", "fleet-test-password"
	if !strings.Contains(string(acl), ">"+placeholder) {
		t.Fatalf("contrib/redis/users.acl has no >%s to replace", placeholder)
	}
	dir := t.TempDir()
	aclFile := filepath.Join(dir, "users.acl")
	if err := os.WriteFile(aclFile, []byte(strings.ReplaceAll(string(acl), placeholder, password)), 0o600); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(dir, "redis-password")
	if err := os.WriteFile(pwFile, []byte("\n  "+password+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t, redistest.Options{ACLFile: aclFile})
	return &fleetRedis{srv: srv, block: fmt.Sprintf("  redis:\n    addrs: [%q]\n    username: tlspolicyd\n    password_file: %s\n",
		srv.Addr, pwFile)}
}

// withFleet adds state.redis to a configuration that has the harness's
// state.path.
func (r *fleetRedis) withFleet(t *testing.T, config string) string {
	t.Helper()
	const state = "state:\n  path: @DIR@/state.db\n"
	if !strings.Contains(config, state) {
		t.Fatalf("the configuration has no %q to add state.redis to", state)
	}
	return strings.Replace(config, state, state+r.block, 1)
}

// startFleet starts n daemons on config and waits until each has reached
// Redis.
func startFleet(t *testing.T, n int, config string) []*daemon {
	t.Helper()
	var ds []*daemon
	for range n {
		ds = append(ds, startDaemon(t, config))
	}
	for _, d := range ds {
		waitMetric(t, d, "tlspolicyd_fleet_redis_up", nil, 1, pollTimeout)
	}
	return ds
}

// smClient asks a socketmap listener over one connection.
type smClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialSocketmap(t *testing.T, d *daemon) *smClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", d.listen["socketmap"], ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &smClient{c: c, r: bufio.NewReader(c)}
}

// ask returns the reply to "tlspolicy KEY".
func (s *smClient) ask(key string) (string, error) {
	s.c.SetDeadline(time.Now().Add(probeWait + ioTimeout))
	if _, err := s.c.Write([]byte(netstring("tlspolicy " + key))); err != nil {
		return "", err
	}
	return readNetstring(s.r, 100000)
}

// waitReply asks until the reply is want, and returns how long that took.
func waitReply(t *testing.T, s *smClient, key, want string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got, err := s.ask(key)
		if err != nil {
			t.Fatalf("lookup of %s: %v", key, err)
		}
		if got == want {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("lookup of %s: %q after %v, want %q", key, got, timeout, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pinsCmd runs `tlspolicyd pins ARGS` through daemon d and wants exit 0.
func pinsCmd(t *testing.T, d *daemon, args ...string) {
	t.Helper()
	if code, out, errOut := runTool(t, append([]string{"pins", "-config", d.configPath}, args...)...); code != 0 {
		t.Fatalf("tlspolicyd pins %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
}

// TestFleetPins: a pin added on one daemon (`pins add`) answers on the two
// others within 2 s; removed on another (`pins remove`), it is gone from
// all three within 2 s, and does not come back.
func TestFleetPins(t *testing.T) {
	t.Parallel()
	r := startFleetRedis(t)
	ds := startFleet(t, 3, r.withFleet(t, listenInet+hermetic+"probe:\n  wait: 1s\n"+adminRules))
	cs := []*smClient{dialSocketmap(t, ds[0]), dialSocketmap(t, ds[1]), dialSocketmap(t, ds[2])}
	for _, c := range cs {
		waitReply(t, c, "partner.test", "OK "+may, pollTimeout)
	}

	pinsCmd(t, ds[0], "add", "partner.test", "verify")
	added := time.Now()
	for i, c := range cs {
		took := waitReply(t, c, "partner.test", "OK "+verify, 10*time.Second)
		if since := time.Since(added); i > 0 {
			t.Logf("daemon %d answers the pin %v after `pins add` on daemon 0", i, since.Round(time.Millisecond))
			if since > fleetPropagation {
				t.Errorf("daemon %d answered the pin %v after it was added, more than %v (polled for %v)", i, since, fleetPropagation, took)
			}
		}
	}
	if p := pinsByKey(t, ds[2].configPath)["partner.test"]; p.Level != "verify" || p.Source != "admin" {
		t.Errorf("pins list on daemon 2: partner.test = %+v; want verify, admin", p)
	}

	pinsCmd(t, ds[1], "remove", "partner.test")
	removed := time.Now()
	for i, c := range cs {
		waitReply(t, c, "partner.test", "OK "+may, 10*time.Second)
		if since := time.Since(removed); since > fleetPropagation {
			t.Errorf("daemon %d still answered the removed pin %v after `pins remove`, more than %v", i, since, fleetPropagation)
		}
	}
	// Reconciliation rounds go by; the removal holds everywhere.
	waitMetric(t, ds[0], "tlspolicyd_fleet_redis_operations_total", map[string]string{"op": "sync"},
		ds[0].metric(t, "tlspolicyd_fleet_redis_operations_total", map[string]string{"op": "sync"})+3, pollTimeout)
	for i, c := range cs {
		if got, err := c.ask("partner.test"); err != nil || got != "OK "+may {
			t.Errorf("daemon %d: partner.test = %q, %v after the removal settled; want %q", i, got, err, "OK "+may)
		}
	}
}

// TestFleetOneProbe: a destination nobody knew, looked up on three
// daemons at once, is probed once across the fleet (one connection at its
// MX host), and every daemon answers what that probe showed.
func TestFleetOneProbe(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t, mxHost{"fresh.test", "mx.fresh.test", "127.0.0.81",
		fakemx.Options{Hostname: "mx.fresh.test", TLS: w.verifiedTLS(t, "mx.fresh.test")}})
	r := startFleetRedis(t)
	ds := startFleet(t, 3, r.withFleet(t, w.probeConfig(t, "defaults:\n  level: may\n  upgrade: verify\n")))
	var wg sync.WaitGroup
	cs := make([]*smClient, len(ds))
	for i, d := range ds {
		cs[i] = dialSocketmap(t, d)
	}
	replies := make([]string, len(ds))
	errs := make([]error, len(ds))
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i], errs[i] = c.ask("fresh.test")
		}()
	}
	wg.Wait()
	for i := range ds {
		if errs[i] != nil || (replies[i] != "OK "+verify && replies[i] != "OK "+may) {
			t.Errorf("daemon %d: first lookup %q, %v; want verify (or the floor while probing)", i, replies[i], errs[i])
		}
	}
	for _, c := range cs {
		waitReply(t, c, "fresh.test", "OK "+verify, probeSettle)
	}
	if n := w.server(t, "mx.fresh.test").Stats().Connections; n != 1 {
		t.Errorf("the MX host of fresh.test was connected to %d times, want 1 (one probe for the fleet)", n)
	}
	var held, waited float64
	for _, d := range ds {
		held += d.metric(t, "tlspolicyd_fleet_probe_leases_total", map[string]string{"result": "held"})
		waited += d.metric(t, "tlspolicyd_fleet_probe_leases_total", map[string]string{"result": "waited"})
	}
	if held != 1 {
		t.Errorf("probe leases held across the fleet: %v, want 1 (waited: %v)", held, waited)
	}
}

// TestFleetRedisDown: Redis killed under load: no lookup fails or answers
// weaker, pins stay; a pin added while Redis is down reaches the other
// daemon within 10 s of Redis returning empty on the same port, and
// Redis has the fleet's pins again.
func TestFleetRedisDown(t *testing.T) {
	t.Parallel()
	r := startFleetRedis(t)
	ds := startFleet(t, 2, r.withFleet(t, listenInet+hermetic+"probe:\n  wait: 1s\n"+adminRules))
	pinsCmd(t, ds[0], "add", "partner.test", "verify")
	waitReply(t, dialSocketmap(t, ds[1]), "partner.test", "OK "+verify, 10*time.Second)

	// Every daemon is asked without pause until the end: a pinned, an
	// opted-out and an unknown destination.
	want := map[string]string{"partner.test": "OK " + verify, "optout.test": "OK " + may, "unknown.test": "OK " + may}
	var stop atomic.Bool
	var lookups, failures atomic.Int64
	var firstFailure atomic.Value
	var wg sync.WaitGroup
	for _, d := range ds {
		c := dialSocketmap(t, d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for key, w := range want {
					got, err := c.ask(key)
					lookups.Add(1)
					if err != nil || got != w {
						failures.Add(1)
						firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s: %q, %v; want %q", key, got, err, w))
					}
				}
			}
		}()
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })

	r.srv.Stop()
	for _, d := range ds {
		eventually(t, pollTimeout, "the daemon sees Redis down", func() (bool, string) {
			v := d.metric(t, "tlspolicyd_fleet_redis_up", nil)
			return v == 0, fmt.Sprintf("tlspolicyd_fleet_redis_up %v", v)
		})
	}
	pinsCmd(t, ds[0], "add", "other.test", "encrypt")
	c0, c1 := dialSocketmap(t, ds[0]), dialSocketmap(t, ds[1])
	waitReply(t, c0, "other.test", "OK "+encrypt, pollTimeout)
	if got, _ := c1.ask("other.test"); got != "OK "+may {
		t.Errorf("daemon 1 answers %q for other.test with Redis down; want the floor (it cannot have heard)", got)
	}
	code, body, err := httpGet(&http.Client{Timeout: ioTimeout}, "http://"+ds[1].http+"/")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "Redis unreachable") {
		t.Errorf("status page with Redis down: %d, %v; want 200 saying \"Redis unreachable\"", code, err)
	}

	r.srv.Restart(t)
	back := time.Now()
	waitReply(t, c1, "other.test", "OK "+encrypt, 15*time.Second)
	if took := time.Since(back); took > 10*time.Second {
		t.Errorf("daemon 1 answered the pin added while Redis was down %v after Redis returned, more than 10s", took)
	} else {
		t.Logf("caught up %v after Redis returned", took.Round(time.Millisecond))
	}
	eventually(t, 10*time.Second, "Redis has the fleet's pins again", func() (bool, string) {
		n, err := r.srv.Do("HLEN", "tlspolicyd:pins")
		return n == ":2", fmt.Sprintf("HLEN tlspolicyd:pins = %q, %v", n, err)
	})

	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d lookups failed or answered otherwise while Redis was down or back; first: %v", n, lookups.Load(), firstFailure.Load())
	} else {
		t.Logf("%d lookups, none failed", lookups.Load())
	}
	for key, w := range map[string]string{"partner.test": "OK " + verify, "other.test": "OK " + encrypt} {
		for i, c := range []*smClient{c0, c1} {
			if got, err := c.ask(key); got != w {
				t.Errorf("daemon %d after Redis returned: %s = %q, %v; want %q", i, key, got, err, w)
			}
		}
	}
}

// TestFleetAbsent: a daemon without state.redis claims no fleet: no fleet
// metric, nothing about a fleet on its status page.
func TestFleetAbsent(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenInet+hermetic+adminRules)
	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	_, metrics, err := httpGet(client, "http://"+d.http+"/metrics")
	if err != nil || !strings.Contains(metrics, "tlspolicyd_pins") {
		t.Fatalf("GET /metrics: %v", err)
	}
	if strings.Contains(metrics, "tlspolicyd_fleet_") {
		t.Errorf("a daemon without state.redis exports fleet metrics")
	}
	if _, page, err := httpGet(client, "http://"+d.http+"/"); err != nil || strings.Contains(page, `id="fleet"`) {
		t.Errorf("the status page of a daemon without state.redis mentions a fleet (err %v)", err)
	}
}
