// Command fleetbench measures a fleet of tlspolicyd daemons sharing a
// Redis (state.redis): how long a pin added on one daemon takes to answer
// on another (p50, p99 over -pins pins), and how long a new daemon takes
// to join a fleet that knows -destinations destinations (until its
// findings cache holds them), with its resident memory then. It starts
// its own redis-server (on a free loopback port, with a password, no
// persistence) and the daemons, all on this machine. Not run in CI.
//
// Usage:
//
//	go build -o /tmp/tlspolicyd . && go run ./tools/fleetbench -bin /tmp/tlspolicyd \
//		[-pins 1000] [-destinations 100000]
//
// For lookups per CPU-second with and without a fleet, see tools/loadgen
// -redis.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

const password = "fleetbench-password"

func main() {
	bin := flag.String("bin", "", "path to the tlspolicyd executable (required)")
	pins := flag.Int("pins", 1000, "pins added one by one on a daemon, each timed until another answers it")
	dests := flag.Int("destinations", 100000, "destinations the fleet knows when a new daemon joins")
	flag.Parse()
	if *bin == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*bin, *pins, *dests); err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		os.Exit(1)
	}
}

func run(bin string, pins, dests int) error {
	dir, err := os.MkdirTemp("", "fleetbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	redisAddr, stopRedis, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer stopRedis()
	pwFile := filepath.Join(dir, "redis-password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}

	a, err := startDaemon(bin, filepath.Join(dir, "a"), redisAddr, pwFile)
	if err != nil {
		return err
	}
	defer a.stop()
	b, err := startDaemon(bin, filepath.Join(dir, "b"), redisAddr, pwFile)
	if err != nil {
		return err
	}
	defer b.stop()
	if err := propagation(a, b, pins); err != nil {
		return err
	}
	return join(bin, dir, redisAddr, pwFile, dests)
}

// propagation adds pins on a, one at a time, and times each until b
// answers it.
func propagation(a, b *daemon, n int) error {
	c, err := net.Dial("tcp", b.socketmap)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	ask := func(key string) (string, error) {
		q := "tlspolicy " + key
		if _, err := fmt.Fprintf(c, "%d:%s,", len(q), q); err != nil {
			return "", err
		}
		return readNetstring(r)
	}
	var took []time.Duration
	for i := range n {
		dest := fmt.Sprintf("pin%d.fleetbench.test", i)
		req, _ := http.NewRequest(http.MethodPut, "http://"+a.http+"/admin/pins/"+dest+"?level=verify", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("PUT /admin/pins/%s: %s", dest, resp.Status)
		}
		added := time.Now()
		for {
			got, err := ask(dest)
			if err != nil {
				return err
			}
			if strings.HasPrefix(got, "OK verify") {
				break
			}
			if time.Since(added) > 30*time.Second {
				return fmt.Errorf("%s: still %q on the other daemon after 30s", dest, got)
			}
		}
		took = append(took, time.Since(added))
	}
	slices.Sort(took)
	fmt.Printf("pin propagation over %d pins: p50 %v, p99 %v, max %v\n", n,
		took[len(took)/2].Round(time.Microsecond), took[len(took)*99/100].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
	return nil
}

// join writes n destinations' findings into Redis as the fleet would,
// starts a new daemon and times it until its cache holds them.
func join(bin, dir, redisAddr, pwFile string, n int) error {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, Password: password, Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	ctx := context.Background()
	now := time.Now()
	start := time.Now()
	for i := 0; i < n; i += 1000 {
		pipe := rdb.Pipeline()
		for j := i; j < min(i+1000, n); j++ {
			key, value := findings(j, now)
			pipe.HSet(ctx, "tlspolicyd:findings", key, value)
			pipe.ZAdd(ctx, "tlspolicyd:findings:seq", redis.Z{Score: float64(j + 1), Member: key})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	if err := rdb.IncrBy(ctx, "tlspolicyd:seq", int64(n)).Err(); err != nil {
		return err
	}
	mem, _ := rdb.MemoryUsage(ctx, "tlspolicyd:findings").Result()
	fmt.Printf("fleet of %d destinations written to Redis in %v (the findings hash: %d MB in Redis)\n",
		n, time.Since(start).Round(time.Millisecond), mem>>20)

	start = time.Now()
	c, err := startDaemon(bin, filepath.Join(dir, "c"), redisAddr, pwFile)
	if err != nil {
		return err
	}
	defer c.stop()
	serving := time.Since(start) // startDaemon returns once the daemon reached the fleet
	var entries float64
	for {
		entries, err = c.metric("tlspolicyd_probe_cache_entries")
		if err != nil {
			return err
		}
		if entries >= float64(n)*0.95 {
			// The cache's shards hold Size/8 each: a few destinations
			// beyond a full shard's share are dropped.
			prev := entries
			time.Sleep(500 * time.Millisecond)
			if entries, _ = c.metric("tlspolicyd_probe_cache_entries"); entries == prev {
				break
			}
		}
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("the new daemon holds %v findings after 5 minutes", entries)
		}
		// Not too often: a scrape sums up every destination (cached for
		// 20 times what that cost), which would compete with the join.
		time.Sleep(250 * time.Millisecond)
	}
	took := time.Since(start)
	if b, err := os.ReadFile(filepath.Join(dir, "c", "daemon.log")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "fleet:") {
				fmt.Println("  new daemon:", line)
			}
		}
	}
	fmt.Printf("a new daemon joining a fleet of %d destinations: joined (first full comparison done) after %v, holding %.0f of them after %v (settled); RSS %s\n",
		n, serving.Round(time.Millisecond), entries, took.Round(time.Millisecond), rss(c.cmd.Process.Pid))
	return nil
}

// findings is the Redis value of destination i's findings (a verified
// probe of one MX host), as a daemon writes it.
func findings(i int, now time.Time) (string, []byte) {
	name := fmt.Sprintf("d%d.fleetbench.test", i)
	f := policyd.Findings{Probe: tlsprobe.Report{
		Target:     tlsprobe.Target{Name: name},
		Capability: tlsprobe.CapVerify,
		ProbedAt:   now,
		Hosts: []tlsprobe.HostReport{{Host: "mx." + name, Preference: 10, Addr: netip.MustParseAddrPort("192.0.2.1:25"),
			STARTTLS: true, TLSVersion: 0x0304, ChainValid: true, NameValid: true, Capability: tlsprobe.CapVerify,
			NotAfter: now.Add(60 * 24 * time.Hour), Subject: "mx." + name, Issuer: "Example CA"}},
	}}
	data, err := f.MarshalBinary()
	if err != nil {
		panic(err)
	}
	v := binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano()))
	return name, append(v, data...)
}

type daemon struct {
	cmd             *exec.Cmd
	socketmap, http string
}

func startDaemon(bin, dir, redisAddr, pwFile string) (*daemon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sm, err := freeAddr()
	if err != nil {
		return nil, err
	}
	web, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dead, err := freeAddr()
	if err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`listen:
  socketmap: %s
  http: %s
dns:
  servers: [%q]
  timeout: 1s
mtasts:
  enabled: false
state:
  path: %s
  redis:
    addrs: [%q]
    password_file: %s
defaults:
  level: may
  upgrade: verify
`, sm, web, dead, filepath.Join(dir, "state.db"), redisAddr, pwFile)
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "-config", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, socketmap: sm, http: web}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if up, err := d.metric("tlspolicyd_fleet_redis_up"); err == nil && up == 1 {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.stop()
			b, _ := os.ReadFile(log.Name())
			return nil, fmt.Errorf("the daemon in %s did not join the fleet within 2 minutes:\n%s", dir, b)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (d *daemon) stop() {
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
}

// metric reads one unlabelled sample (or the sum of a family's) from
// /metrics.
func (d *daemon) metric(name string) (float64, error) {
	resp, err := http.Get("http://" + d.http + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	found := false
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("no %s", name)
	}
	return sum, nil
}

// rss is a process's resident memory, from /proc.
func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func startRedis(dir string) (string, func(), error) {
	addr, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--requirepass", password,
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("redis-server: %w (apt-get install redis-server)", err)
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("redis-server on %s did not start", addr)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func readNetstring(r *bufio.Reader) (string, error) {
	n, err := r.ReadString(':')
	if err != nil {
		return "", err
	}
	size, err := strconv.Atoi(strings.TrimSuffix(n, ":"))
	if err != nil || size > 1<<20 {
		return "", fmt.Errorf("bad netstring length %q", n)
	}
	b := make([]byte, size+1)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b[:size]), nil
}
