package acceptance

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// BenchmarkColdProbe measures the daemon probing destinations it has never
// seen, looked up at once over coldConns connections as Postfix's smtp
// processes would, with the shipped defaults (upgrade: encrypt, MTA-STS
// on). In "own-mx", 1,000 domains each name an MX host of their own (so
// each needs a handshake of its own; 10 fake MX servers, on addresses of
// their own, serve them); in "shared-mx", 10,000 domains share 50 MX
// hosts, as hosted mail does. It reports the wall time until every domain
// is answered from its probe, domains per second, the handshakes the MX
// servers saw, the daemon's peak goroutines and peak resident memory, and
// the p99 of rule-only lookups made on another connection while the probes
// run, against the same lookups on the idle daemon. Each is one
// measurement, not a b.N loop; run it once:
//
//	go test -run '^$' -bench ColdProbe -benchtime 1x ./internal/acceptance/
func BenchmarkColdProbe(b *testing.B) {
	b.Run("own-mx", func(b *testing.B) {
		coldProbe(b, 1000, 10, func(domain string, _ int) string { return "mx." + domain })
	})
	b.Run("shared-mx", func(b *testing.B) {
		coldProbe(b, 10000, 50, func(_ string, i int) string { return fmt.Sprintf("mx%02d.provider.bench.test", i%50) })
	})
}

// coldProbe is BenchmarkColdProbe for coldDomains domains whose MX host
// names mxOf gives, served by coldHosts fake MX servers (domain i by
// server i mod coldHosts).
func coldProbe(b *testing.B, coldDomains, coldHosts int, mxOf func(domain string, i int) string) {
	const (
		coldConns  = 64
		idleWindow = 3 * time.Second
	)
	dir := b.TempDir()
	ca, err := testca.New("cold probe CA")
	if err != nil {
		b.Fatal(err)
	}
	caFile, err := ca.WritePEM(dir)
	if err != nil {
		b.Fatal(err)
	}
	dns, err := fakedns.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer dns.Close()
	hosts := make([]fakemx.Host, coldHosts)
	names := make([]string, coldDomains)
	for i := range names {
		names[i] = fmt.Sprintf("cold%04d.bench.test", i)
	}
	for h := range hosts {
		// One certificate per server, naming the MX host of each domain it
		// serves.
		var mxNames []string
		for i := h; i < coldDomains; i += coldHosts {
			if n := mxOf(names[i], i); !slices.Contains(mxNames, n) {
				mxNames = append(mxNames, n)
			}
		}
		cert, err := ca.Leaf(testca.LeafOptions{DNSNames: mxNames})
		if err != nil {
			b.Fatal(err)
		}
		hosts[h] = fakemx.Host{IP: fmt.Sprintf("127.0.%d.%d", 21+h/200, h%200+1), Options: fakemx.Options{
			Hostname: "mx.cold.bench.test", TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Timeout: time.Minute}}
	}
	servers, err := fakemx.StartGroup(hosts...)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(servers[0].Addr())
	for i, name := range names {
		dns.AddMX(name, 10, mxOf(name, i))
		dns.AddA(mxOf(name, i), hosts[i%coldHosts].IP)
	}

	ports := benchPorts(b, 2)
	bd := &benchDaemon{socketmap: ports[0], http: ports[1], log: filepath.Join(dir, "daemon.log")}
	bd.start(b, filepath.Join(dir, "cold.yaml"), fmt.Sprintf(`listen:
  socketmap: %s
  http: %s
dns:
  servers: [%q]
probe:
  port: %s
  ca_file: %q
  allow_private: true
state:
  path: %s
defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: ruled.bench.test
    level: verify
`, bd.socketmap, bd.http, dns.Addr(), port, caFile, filepath.Join(dir, "state.db")))
	defer bd.stop(b)
	const ruled = "OK verify protocols=>=TLSv1.2"

	idle := ruleOnlyLatencies(b, bd.socketmap, ruled, func(time.Duration) bool { return true }, idleWindow)

	peak := watchDaemon(b, bd)
	var left atomic.Int64
	left.Store(int64(coldDomains))
	start := time.Now()
	var busy []time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		busy = ruleOnlyLatencies(b, bd.socketmap, ruled, func(time.Duration) bool { return left.Load() > 0 }, 0)
	})
	var conns sync.WaitGroup
	for c := range coldConns {
		conns.Go(func() {
			for i := c; i < coldDomains; i += coldConns {
				lookupUntil(b, bd.socketmap, names[i], "OK "+encrypt)
				left.Add(-1)
			}
		})
	}
	conns.Wait()
	wall := time.Since(start)
	wg.Wait()
	goroutines, rss := peak()

	probes := bd.metric(b, "tlspolicyd_probes_total", "")
	handshakes := 0
	for _, s := range servers {
		handshakes += s.Stats().Handshakes
	}
	slices.Sort(idle)
	slices.Sort(busy)
	p99 := func(l []time.Duration) time.Duration {
		if len(l) == 0 {
			b.Fatal("no rule-only lookup measured")
		}
		return l[len(l)*99/100]
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(wall.Seconds(), "wall-s")
	b.ReportMetric(float64(coldDomains)/wall.Seconds(), "domains/s")
	b.ReportMetric(float64(handshakes), "handshakes")
	b.ReportMetric(float64(goroutines), "peak-goroutines")
	b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
	b.ReportMetric(float64(p99(busy).Microseconds()), "busy-p99-µs")
	b.ReportMetric(float64(p99(idle).Microseconds()), "idle-p99-µs")
	b.Logf("%d never-seen domains over %d MX servers, %d connections: every one answered from its probe after %v (%.0f domains/s, %v probes, %d handshakes at the MX servers); peak %d goroutines, peak RSS %.1f MiB",
		coldDomains, coldHosts, coldConns, wall.Round(time.Millisecond), float64(coldDomains)/wall.Seconds(), probes, handshakes, goroutines, float64(rss)/(1<<20))
	b.Logf("rule-only lookups on another connection: p99 %v while probing (%d lookups), %v idle (%d lookups, %v)",
		p99(busy), len(busy), p99(idle), len(idle), idleWindow)
}

// ruleOnlyLatencies looks up a destination a rule answers, one request at
// a time on one connection, while more(elapsed) holds, or for window if it
// is not 0, and returns each lookup's latency. The lookups are made by a
// process of their own (this test binary again, see latencyClient, on one
// CPU thread), so that what they measure is the daemon, not this process's
// fake servers and clients, whose goroutines would queue before them.
func ruleOnlyLatencies(b *testing.B, addr, want string, more func(time.Duration) bool, window time.Duration) []time.Duration {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), latencyClientEnv+"="+addr+" "+want, "GOMAXPROCS=1")
	stop, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for {
		elapsed := time.Since(start)
		if window > 0 && elapsed >= window || window == 0 && !more(elapsed) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop.Close()
	if err := cmd.Wait(); err != nil {
		b.Errorf("latency client: %v: %s", err, errOut.String())
		return nil
	}
	var lat []time.Duration
	for line := range strings.Lines(out.String()) {
		ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
		if err != nil {
			b.Errorf("latency client: %q: %v", line, err)
			return nil
		}
		lat = append(lat, time.Duration(ns))
	}
	return lat
}

// latencyClientEnv, set to "ADDR WANT", makes the test binary the client
// of ruleOnlyLatencies: it looks up ruled.bench.test at ADDR until its
// standard input closes, checks each reply is WANT, and writes each
// lookup's latency in nanoseconds, one a line.
const latencyClientEnv = "TLSPOLICYD_LATENCY_CLIENT"

func latencyClient(spec string) int {
	addr, want, _ := strings.Cut(spec, " ")
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	var done atomic.Bool
	go func() {
		io.Copy(io.Discard, os.Stdin)
		done.Store(true)
	}()
	r := bufio.NewReader(c)
	req := []byte(fmt.Sprintf("%d:tlspolicy ruled.bench.test,", len("tlspolicy ruled.bench.test")))
	lat := make([]time.Duration, 0, 1<<16)
	for !done.Load() {
		t0 := time.Now()
		c.SetDeadline(t0.Add(ioTimeout))
		if _, err := c.Write(req); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		reply, err := readNetstring(r, 100000)
		if err != nil || reply != want {
			fmt.Fprintf(os.Stderr, "rule-only lookup: %q, %v; want %q\n", reply, err, want)
			return 1
		}
		lat = append(lat, time.Since(t0))
	}
	w := bufio.NewWriter(os.Stdout)
	for _, d := range lat {
		fmt.Fprintln(w, int64(d))
	}
	w.Flush()
	return 0
}

// lookupUntil looks key up on a connection of its own until the answer is
// want (the first lookup waits at most probe.wait, then gets the floor).
func lookupUntil(b *testing.B, addr, key, want string) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		b.Error(err)
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	req := []byte(fmt.Sprintf("%d:tlspolicy %s,", len("tlspolicy ")+len(key), key))
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		c.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Write(req); err != nil {
			b.Error(err)
			return
		}
		reply, err := readNetstring(r, 100000)
		if err != nil {
			b.Error(err)
			return
		}
		if reply == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Errorf("%s not answered %q within a minute", key, want)
}

// watchDaemon samples the daemon's goroutines (/metrics) and resident
// memory (/proc) every 250 ms (a scrape is not free: more often would load the daemon it measures) until the returned function is called, which
// returns the peaks.
func watchDaemon(b *testing.B, bd *benchDaemon) func() (goroutines int, rss int64) {
	stop := make(chan struct{})
	done := make(chan struct{})
	var maxG int
	var maxRSS int64
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			if g := int(bd.metric(b, "go_goroutines", "")); g > maxG {
				maxG = g
			}
			if r := residentBytes(bd.cmd.Process.Pid); r > maxRSS {
				maxRSS = r
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() (int, int64) {
		close(stop)
		<-done
		return maxG, maxRSS
	}
}

// residentBytes is a process's resident set size (VmRSS), or 0.
func residentBytes(pid int) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
