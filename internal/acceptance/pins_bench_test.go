package acceptance

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
)

// BenchmarkPins measures the daemon with 100,000 pinned destinations: the
// store's size on disk, the start-up time (from exec to /healthz 200, which
// includes loading every pin into memory), and socketmap lookup throughput
// and latency with keys that hit pins (answered encrypt without a probe),
// over benchPinConns persistent connections with one request outstanding
// each, as Postfix's smtp processes keep them. It is one measurement, not a
// b.N loop; run it once:
//
//	go test -run '^$' -bench Pins -benchtime 1x ./internal/acceptance/
func BenchmarkPins(b *testing.B) {
	const (
		startRuns = 7
		warmup    = time.Second
		window    = 5 * time.Second
	)
	dir := b.TempDir()
	statePath := filepath.Join(dir, "state.db")
	keys, took := writeBenchPins(b, statePath, benchPinCount)
	fi, err := os.Stat(statePath)
	if err != nil {
		b.Fatal(err)
	}
	size := fi.Size()

	empty := filepath.Join(dir, "empty.db")
	baseline := medianStart(b, dir, empty, 3)
	startup := medianStart(b, dir, statePath, startRuns)

	bd := launchBench(b, dir, statePath)
	defer bd.stop(b)
	if n := bd.metric(b, "tlspolicyd_pins", "encrypt"); n != benchPinCount {
		b.Fatalf(`tlspolicyd_pins{level="encrypt"} = %v, want %d`, n, benchPinCount)
	}
	// Every answer is the pin's (loadConn checks it), never waiting for
	// a probe: a pinned lookup answers at once and only asks for the
	// destination's probe in the background, to keep the pin confirmed
	// (here the probes fail at once, DNS being dead).
	res := loadPins(b, bd.socketmap, keys, benchPinConns, warmup, window)
	background := bd.metric(b, "tlspolicyd_probes_total", "")

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(size), "store-bytes")
	b.ReportMetric(float64(startup.Microseconds())/1000, "startup-ms")
	b.ReportMetric(res.rate, "lookups/s")
	b.ReportMetric(float64(res.p50.Nanoseconds())/1000, "p50-µs")
	b.ReportMetric(float64(res.p99.Nanoseconds())/1000, "p99-µs")
	b.Logf("%d pins written in %d transactions of %d in %v; store file %d bytes (%.1f MiB, %.0f bytes per pin)",
		benchPinCount, benchPinCount/benchPinBatch, benchPinBatch, took.Round(time.Millisecond), size, float64(size)/(1<<20), float64(size)/benchPinCount)
	b.Logf("start-up, exec to /healthz 200, median of %d: %v with %d pins (empty store, median of 3: %v)",
		startRuns, startup.Round(time.Millisecond), benchPinCount, baseline.Round(time.Millisecond))
	b.Logf("lookups of pinned keys, %d connections, %v after %v warm-up: %d lookups, %.0f lookups/s, p50 %v, p99 %v; %v background probes",
		benchPinConns, window, warmup, res.n, res.rate, res.p50, res.p99, background)
}

const (
	benchPinCount = 100000
	benchPinBatch = 10000
	benchPinConns = 8
	benchAnswer   = "OK " + encrypt
)

// writeBenchPins writes n encrypt pins (pN.bench.test) straight into a new
// store, benchPinBatch per transaction, and returns their keys and how long
// the writing took.
func writeBenchPins(b *testing.B, path string, n int) ([]string, time.Duration) {
	b.Helper()
	start := time.Now()
	st, err := state.OpenBolt(path, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	keys := make([]string, 0, n)
	batch := make([]state.Pin, 0, benchPinBatch)
	for i := range n {
		k := fmt.Sprintf("p%06d.bench.test", i)
		keys = append(keys, k)
		batch = append(batch, state.Pin{Key: k, Level: "encrypt", FirstSeen: now, LastSeen: now,
			Expires: now.Add(720 * time.Hour), Source: "probe"})
		if len(batch) == benchPinBatch || i == n-1 {
			if err := st.PutPins(batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	return keys, time.Since(start)
}

// benchDaemon is a daemon started by the benchmark.
type benchDaemon struct {
	cmd       *exec.Cmd
	log       string
	http      string
	socketmap string
}

// launchBench starts tlspolicyd serve on the store at statePath, waits for
// /healthz 200 and returns it with the time from exec to that answer.
func launchBench(b *testing.B, dir, statePath string) *benchDaemon {
	b.Helper()
	bd, _ := launchBenchTimed(b, dir, statePath)
	return bd
}

func launchBenchTimed(b *testing.B, dir, statePath string) (*benchDaemon, time.Duration) {
	b.Helper()
	ports := benchPorts(b, 2)
	bd := &benchDaemon{socketmap: ports[0], http: ports[1], log: filepath.Join(dir, "daemon.log")}
	config := filepath.Join(dir, "bench.yaml")
	text := fmt.Sprintf(`listen:
  socketmap: %s
  http: %s
dns:
  servers: ["127.0.0.1:1"]
  timeout: 1s
state:
  path: %s
mtasts:
  enabled: false
defaults:
  level: may
  upgrade: encrypt
`, bd.socketmap, bd.http, statePath)
	return bd, bd.start(b, config, text)
}

// start writes text to the file config and runs the daemon on it, and
// returns the time from exec to /healthz 200.
func (bd *benchDaemon) start(b *testing.B, config, text string) time.Duration {
	b.Helper()
	if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	logf, err := os.Create(bd.log)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	bd.cmd = exec.Command(daemonBin, "serve", "-config", config)
	bd.cmd.Stdout, bd.cmd.Stderr = logf, logf
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	start := time.Now()
	if err := bd.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	for {
		if code, _, err := httpGet(client, "http://"+bd.http+"/healthz"); err == nil && code == http.StatusOK {
			return time.Since(start)
		}
		if time.Since(start) > 60*time.Second {
			bd.cmd.Process.Kill()
			bd.cmd.Wait()
			log, _ := os.ReadFile(bd.log)
			b.Fatalf("the daemon did not answer /healthz within 60s:\n%s", log)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// benchPorts returns n distinct loopback addresses that were free a moment
// ago (freePorts, for a benchmark).
func benchPorts(b *testing.B, n int) []string {
	b.Helper()
	var addrs []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

func (bd *benchDaemon) stop(b *testing.B) {
	b.Helper()
	bd.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- bd.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			log, _ := os.ReadFile(bd.log)
			b.Errorf("daemon exit after SIGTERM: %v\n%s", err, log)
		}
	case <-time.After(stopTimeout):
		bd.cmd.Process.Kill()
		<-done
		b.Errorf("the daemon did not exit within %v of SIGTERM", stopTimeout)
	}
}

// metric scrapes one metric, summed over its series (or the series with
// label level=level).
func (bd *benchDaemon) metric(b *testing.B, name, level string) float64 {
	b.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	code, body, err := httpGet(client, "http://"+bd.http+"/metrics")
	if err != nil || code != http.StatusOK {
		b.Fatalf("GET /metrics: %d, %v", code, err)
	}
	samples, err := parseMetrics(body)
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, s := range samples {
		if s.name == name && (level == "" || s.labels["level"] == level) {
			sum += s.value
		}
	}
	return sum
}

// medianStart starts and stops a daemon on the store runs times and returns
// the median time from exec to /healthz 200.
func medianStart(b *testing.B, dir, statePath string, runs int) time.Duration {
	b.Helper()
	var times []time.Duration
	for range runs {
		bd, took := launchBenchTimed(b, dir, statePath)
		bd.stop(b)
		times = append(times, took)
	}
	slices.Sort(times)
	b.Logf("start-up times with %s: %v", filepath.Base(statePath), times)
	return times[len(times)/2]
}

// loadResult is what loadPins measured.
type loadResult struct {
	n        int
	rate     float64
	p50, p99 time.Duration
}

// loadPins sends socketmap lookups of random keys over conns persistent
// connections, one outstanding each, for warmup and then window, and
// measures the window. Every answer must be benchAnswer.
func loadPins(b *testing.B, addr string, keys []string, conns int, warmup, window time.Duration) loadResult {
	b.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		all     []time.Duration
		failure error
	)
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+window)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat, err := loadConn(addr, keys, uint64(i), measureFrom, end)
			mu.Lock()
			defer mu.Unlock()
			all = append(all, lat...)
			if err != nil && failure == nil {
				failure = err
			}
		}()
	}
	wg.Wait()
	if failure != nil {
		b.Fatal(failure)
	}
	slices.Sort(all)
	if len(all) == 0 {
		b.Fatal("no lookup completed")
	}
	return loadResult{
		n:    len(all),
		rate: float64(len(all)) / window.Seconds(),
		p50:  all[len(all)/2],
		p99:  all[len(all)*99/100],
	}
}

func loadConn(addr string, keys []string, seed uint64, measureFrom, end time.Time) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	rng := rand.New(rand.NewPCG(seed, 42))
	lat := make([]time.Duration, 0, 1<<16)
	var req []byte
	for {
		t0 := time.Now()
		if !t0.Before(end) {
			return lat, nil
		}
		key := keys[rng.IntN(len(keys))]
		req = fmt.Appendf(req[:0], "%d:tlspolicy %s,", len("tlspolicy ")+len(key), key)
		c.SetDeadline(t0.Add(ioTimeout))
		if _, err := c.Write(req); err != nil {
			return lat, err
		}
		reply, err := readNetstring(r, 100000)
		if err != nil {
			return lat, fmt.Errorf("lookup of %s: %w", key, err)
		}
		if reply != benchAnswer {
			return lat, fmt.Errorf("lookup of %s: %q, want %q", key, reply, benchAnswer)
		}
		if !t0.Before(measureFrom) {
			lat = append(lat, time.Since(t0))
		}
	}
}
