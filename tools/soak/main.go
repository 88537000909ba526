// Command soak runs tlspolicyd for a long time under mixed load and says
// whether it held up: well-behaved clients on every protocol (as Postfix's
// smtp and smtpd processes use them) must never see an error, while floods
// of idle connections, malformed requests and byte-a-second trickles hit
// the same listeners and the configuration is reloaded again and again.
// The daemon's resident memory, goroutines and open files are sampled
// throughout; they must stay flat.
//
//	go build -o /tmp/tlspolicyd . && go run ./tools/soak -bin /tmp/tlspolicyd [-duration 30m]
//
// It is not part of the test suite: it takes as long as it is told to. The
// exit status is non-zero when a well-behaved request failed or the daemon
// died.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/benchworld"
)

type options struct {
	bin      string
	duration time.Duration
	sample   time.Duration
	reload   time.Duration
	domains  int
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "path to the tlspolicyd executable (required)")
	flag.DurationVar(&o.duration, "duration", 30*time.Minute, "how long to run")
	flag.DurationVar(&o.sample, "sample", 30*time.Second, "how often to sample and print the daemon's state")
	flag.DurationVar(&o.reload, "reload", 20*time.Second, "how often to rewrite the configuration and send SIGHUP")
	flag.IntVar(&o.domains, "domains", 5000, "destinations of the fake world (each probed once, then answered from the cache)")
	flag.Parse()
	if o.bin == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// counters are what the run counts; failures are what must stay zero.
type counters struct {
	lookups, failures, reconnects           atomic.Int64
	floods, floodConns, malformed, trickles atomic.Int64
	reloads                                 atomic.Int64
	firstFailure                            atomic.Pointer[string]
}

func (c *counters) fail(format string, args ...any) {
	c.failures.Add(1)
	msg := fmt.Sprintf(format, args...)
	c.firstFailure.CompareAndSwap(nil, &msg)
}

// daemon is the tlspolicyd under test and where it listens.
type daemon struct {
	cmd                               *exec.Cmd
	config, log                       string
	socketmap, tcptable, policy, http string
	world                             *benchworld.World
	dir                               string
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	domains := make([]string, o.domains)
	for i := range domains {
		domains[i] = fmt.Sprintf("d%05d.soak.test", i)
	}
	w, err := benchworld.Start(dir, domains)
	if err != nil {
		return err
	}
	defer w.Close()
	d := &daemon{config: filepath.Join(dir, "tlspolicyd.yaml"), log: filepath.Join(dir, "daemon.log"), world: w, dir: dir}
	addrs, err := freeAddrs(4)
	if err != nil {
		return err
	}
	d.socketmap, d.tcptable, d.policy, d.http = addrs[0], addrs[1], addrs[2], addrs[3]
	if err := d.writeConfig("verify"); err != nil {
		return err
	}
	if err := d.start(); err != nil {
		return err
	}
	defer d.stop()

	var c counters
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { c.socketmapClient(ctx, d.socketmap, domains, uint64(i)) })
	}
	for i := range 2 {
		wg.Go(func() { c.tcptableClient(ctx, d.tcptable, domains, uint64(100+i)) })
		wg.Go(func() { c.policyClient(ctx, d.policy) })
	}
	wg.Go(func() { c.idleFloods(ctx, d.socketmap) })
	for range 4 {
		wg.Go(func() { c.malformedFlood(ctx, d.socketmap, d.tcptable, d.policy) })
	}
	for range 5 {
		wg.Go(func() { c.trickle(ctx, d.socketmap) })
	}
	wg.Go(func() { c.reloadEvery(ctx, d, o.reload) })

	start := time.Now()
	fmt.Printf("soak: %v against %s (pid %d), %d destinations; sampling every %v\n", o.duration, o.bin, d.cmd.Process.Pid, o.domains, o.sample)
	fmt.Printf("%8s %10s %8s %10s %8s %9s %9s %7s %6s %8s %8s\n",
		"elapsed", "lookups", "failures", "reconnects", "floods", "malformed", "trickles", "reloads", "rss_MiB", "goroutines", "fds")
	var samples []sample
	tick := time.NewTicker(o.sample)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
		}
		s, err := d.sample()
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		samples = append(samples, s)
		fmt.Printf("%8s %10d %8d %10d %8d %9d %9d %7d %6.1f %8d %8d\n", time.Since(start).Round(time.Second),
			c.lookups.Load(), c.failures.Load(), c.reconnects.Load(), c.floods.Load(), c.malformed.Load(),
			c.trickles.Load(), c.reloads.Load(), float64(s.rss)/(1<<20), s.goroutines, s.fds)
	}
	wg.Wait()
	return summarise(&c, samples, d)
}

// summarise prints the verdict and returns an error if a well-behaved
// request failed.
func summarise(c *counters, samples []sample, d *daemon) error {
	if len(samples) >= 3 {
		// The first sample includes the probes of the world's
		// destinations; memory is judged from the second one on.
		first, last, peak := samples[1], samples[len(samples)-1], samples[1]
		for _, s := range samples[1:] {
			if s.rss > peak.rss {
				peak = s
			}
		}
		fmt.Printf("RSS: %.1f MiB at the second sample, %.1f MiB at the end (%+.1f%%), peak %.1f MiB; goroutines %d -> %d; fds %d -> %d\n",
			float64(first.rss)/(1<<20), float64(last.rss)/(1<<20), 100*(float64(last.rss)/float64(first.rss)-1), float64(peak.rss)/(1<<20),
			first.goroutines, last.goroutines, first.fds, last.fds)
	}
	fmt.Printf("well-behaved lookups: %d, failures: %d, reconnects after the daemon closed an idle connection: %d\n",
		c.lookups.Load(), c.failures.Load(), c.reconnects.Load())
	fmt.Printf("abuse: %d idle floods (%d connections), %d malformed requests, %d trickling connections; %d reloads\n",
		c.floods.Load(), c.floodConns.Load(), c.malformed.Load(), c.trickles.Load(), c.reloads.Load())
	if n := c.failures.Load(); n > 0 {
		return fmt.Errorf("%d well-behaved requests failed; first: %s (daemon log: %s)", n, *c.firstFailure.Load(), d.log)
	}
	return nil
}

// socketmapClient is a Postfix smtp process: one persistent connection,
// one lookup at a time, reconnecting (once per lookup) when the daemon has
// closed the connection, as Postfix does.
func (c *counters) socketmapClient(ctx context.Context, addr string, domains []string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for ctx.Err() == nil {
		key, want := pickKey(rng, domains)
		req := fmt.Sprintf("%d:tlspolicy %s,", len("tlspolicy ")+len(key), key)
		var reply string
		var err error
		for attempt := 0; attempt < 2; attempt++ {
			if conn == nil {
				if conn, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
					break
				}
				br = bufio.NewReader(conn)
			}
			conn.SetDeadline(time.Now().Add(100 * time.Second)) // Postfix's request limit
			if _, err = conn.Write([]byte(req)); err == nil {
				reply, err = readNetstring(br)
			}
			if err == nil {
				break
			}
			conn.Close()
			conn = nil
			if attempt == 0 {
				c.reconnects.Add(1)
			}
		}
		if ctx.Err() != nil {
			return
		}
		c.lookups.Add(1)
		switch {
		case err != nil:
			c.fail("socketmap %s: %v", key, err)
		case !want(reply):
			c.fail("socketmap %s: %q", key, reply)
		}
	}
}

// pickKey returns a key of the mix and what its answer must be: a
// destination a rule names (verify, or secure after a reload), one of the
// world's (the floor, or encrypt once probed), one that does not exist
// (the floor: its probe fails), in mixed case now and then.
func pickKey(rng *rand.Rand, domains []string) (string, func(string) bool) {
	switch n := rng.IntN(10); {
	case n < 2:
		return "ruled.soak.test", func(r string) bool {
			return r == "OK verify protocols=>=TLSv1.2" || r == "OK secure protocols=>=TLSv1.2"
		}
	case n < 8:
		d := domains[rng.IntN(len(domains))]
		if n == 7 {
			d = strings.ToUpper(d)
		}
		return d, func(r string) bool { return r == "OK may" || r == "OK encrypt protocols=>=TLSv1.2" }
	default:
		return fmt.Sprintf("gone%05d.soak.test", rng.IntN(100000)), func(r string) bool { return r == "OK may" }
	}
}

// tcptableClient is a Postfix process asking through tcp_table.
func (c *counters) tcptableClient(ctx context.Context, addr string, domains []string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			c.fail("tcp_table dial: %v", err)
			time.Sleep(time.Second)
			continue
		}
		br := bufio.NewReader(conn)
		for i := 0; i < 100 && ctx.Err() == nil; i++ {
			key, want := pickKey(rng, domains)
			conn.SetDeadline(time.Now().Add(100 * time.Second))
			if _, err = fmt.Fprintf(conn, "get %s\n", key); err != nil {
				break
			}
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			c.lookups.Add(1)
			line = strings.TrimSuffix(line, "\n")
			value, ok := strings.CutPrefix(line, "200 ")
			value = strings.ReplaceAll(value, "%20", " ")
			if !ok || !want("OK "+value) {
				c.fail("tcp_table %s: %q", key, line)
			}
		}
		conn.Close()
		if err != nil && ctx.Err() == nil {
			c.reconnects.Add(1)
		}
	}
}

// policyClient is a Postfix smtpd asking at RCPT time.
func (c *counters) policyClient(ctx context.Context, addr string) {
	req := "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=192.0.2.1\n" +
		"sender=someone@sender.soak.test\nrecipient=user@ruled.soak.test\ninstance=1.2.3\n\n"
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			c.fail("policy dial: %v", err)
			time.Sleep(time.Second)
			continue
		}
		br := bufio.NewReader(conn)
		for i := 0; i < 100 && ctx.Err() == nil; i++ {
			conn.SetDeadline(time.Now().Add(100 * time.Second))
			if _, err = conn.Write([]byte(req)); err != nil {
				break
			}
			var lines []string
			for {
				line, rerr := br.ReadString('\n')
				if rerr != nil {
					err = rerr
					break
				}
				if line == "\n" {
					break
				}
				lines = append(lines, strings.TrimSuffix(line, "\n"))
			}
			if err != nil {
				break
			}
			c.lookups.Add(1)
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "action=") || strings.HasPrefix(lines[0], "action=DEFER") {
				c.fail("policy: %q", lines)
			}
		}
		conn.Close()
		if err != nil && ctx.Err() == nil {
			c.reconnects.Add(1)
		}
	}
}

// idleFloods opens, every 15 s, 300 connections from 127.0.0.2 that send
// nothing, and holds them 10 s: more than the listener's cap.
func (c *counters) idleFloods(ctx context.Context, addr string) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	for ctx.Err() == nil {
		var conns []net.Conn
		for range 300 {
			if conn, err := d.DialContext(ctx, "tcp", addr); err == nil {
				conns = append(conns, conn)
			}
		}
		c.floods.Add(1)
		c.floodConns.Add(int64(len(conns)))
		sleep(ctx, 10*time.Second)
		for _, conn := range conns {
			conn.Close()
		}
		sleep(ctx, 5*time.Second)
	}
}

// malformedFlood sends malformed requests, each on a new connection from
// 127.0.0.3, to the three protocols in turn, about 50 a second at most
// (fewer when the daemon waits for the rest of a request that never comes:
// the flood gives up after half a second).
func (c *counters) malformedFlood(ctx context.Context, addrs ...string) {
	bad := [][]byte{
		[]byte("99999999999:tlspolicy x,"), []byte("12:tlspolicy x;"), []byte("abc"), []byte("5:hello,"),
		[]byte("get \x00\x01\n"), []byte(strings.Repeat("A", 70000) + "\n"),
		[]byte("request=smtpd_access_policy\n" + strings.Repeat("x", 5000) + "\n\n"), []byte("=\n\n"),
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}, Timeout: 5 * time.Second}
	for i := 0; ctx.Err() == nil; i++ {
		conn, err := d.DialContext(ctx, "tcp", addrs[i%len(addrs)])
		if err == nil {
			conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
			conn.Write(bad[i%len(bad)])
			buf := make([]byte, 512)
			conn.Read(buf)
			conn.Close()
			c.malformed.Add(1)
		}
		sleep(ctx, 20*time.Millisecond)
	}
}

// trickle sends a valid request one byte a second, from 127.0.0.4, again
// and again: the request deadline must end each connection.
func (c *counters) trickle(ctx context.Context, addr string) {
	req := []byte("25:tlspolicy ruled.soak.test,")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 4)}, Timeout: 5 * time.Second}
	for ctx.Err() == nil {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			sleep(ctx, time.Second)
			continue
		}
		c.trickles.Add(1)
		for _, b := range req {
			if _, err := conn.Write([]byte{b}); err != nil || !sleep(ctx, time.Second) {
				break
			}
		}
		conn.Close()
	}
}

// reloads rewrites the configuration every period, the rule's level
// switching between verify and secure, and sends SIGHUP.
func (c *counters) reloadEvery(ctx context.Context, d *daemon, period time.Duration) {
	levels := []string{"secure", "verify"}
	for i := 0; sleep(ctx, period); i++ {
		if err := d.writeConfig(levels[i%2]); err != nil {
			c.fail("writing the configuration: %v", err)
			return
		}
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			c.fail("SIGHUP: %v", err)
			return
		}
		c.reloads.Add(1)
	}
}

func (d *daemon) writeConfig(level string) error {
	text := fmt.Sprintf(`listen:
  socketmap: %s
  tcptable: %s
  policy: %s
  http: %s
  max_connections: 200
  idle_timeout: 20s
%s  wait: 2s
  ttl: 10m
state:
  path: %s
defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: ruled.soak.test
    level: %s
`, d.socketmap, d.tcptable, d.policy, d.http, d.world.Config(), filepath.Join(d.dir, "state.db"), level)
	tmp := d.config + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.config)
}

func (d *daemon) start() error {
	logf, err := os.Create(d.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	d.cmd = exec.Command(d.cmdPath(), "serve", "-config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("tcp", d.socketmap); err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.stop()
	log, _ := os.ReadFile(d.log)
	return fmt.Errorf("the daemon did not start:\n%s", log)
}

func (d *daemon) cmdPath() string { return flag.Lookup("bin").Value.String() }

func (d *daemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
}

// sample is the daemon's state at one moment.
type sample struct {
	rss        int64
	goroutines int
	fds        int
}

func (d *daemon) sample() (sample, error) {
	pid := d.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		log, _ := os.ReadFile(d.log)
		return sample{}, fmt.Errorf("the daemon is gone (%v); its log:\n%s", err, tail(string(log), 40))
	}
	var s sample
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			s.rss = kb << 10
		}
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = len(fds)
	}
	s.goroutines, _ = d.goroutines()
	return s, nil
}

// goroutines reads go_goroutines from the daemon's /metrics.
func (d *daemon) goroutines() (int, error) {
	conn, err := net.DialTimeout("tcp", d.http, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", d.http)
	// The whole page is read: a client that hangs up early makes the
	// daemon log a write error.
	body, err := io.ReadAll(io.LimitReader(conn, 16<<20))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go_goroutines "); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("no go_goroutines in /metrics")
}

func readNetstring(br *bufio.Reader) (string, error) {
	lenStr, err := br.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(lenStr, ":"))
	if err != nil || n < 0 || n > 100000 {
		return "", fmt.Errorf("bad netstring length %q", lenStr)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(br, buf); err != nil {
		return "", err
	}
	if buf[n] != ',' {
		return "", errors.New("netstring without its comma")
	}
	return string(buf[:n]), nil
}

func freeAddrs(n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// sleep waits d or until ctx ends, and reports whether ctx is still on.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
