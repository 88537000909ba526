// Command loadgen measures how close tlspolicyd's socketmap server comes to
// the cost floor of this machine. It loads the daemon over loopback with
// persistent connections, one outstanding lookup each (as Postfix's smtp
// processes do), and in the same run applies the same load to a reference
// server that does the least a correct socketmap server can do: read a
// netstring, answer a constant one. Both run as child processes so each
// one's CPU time is read alone from /proc.
//
// Usage:
//
//	go build -o /tmp/tlspolicyd . && go run ./tools/loadgen -bin /tmp/tlspolicyd \
//		[-duration 5s] [-warmup 1s] [-conns 1,8,64] [-rounds 3] [-json] \
//		[-redis 127.0.0.1:6379 -redis-password-file FILE]
//
// With -redis the daemon is one of a fleet (state.redis): compare its
// lookups per CPU-second with a run without.
//
// Reported per concurrency, as the median over rounds: lookups per second,
// p50 and p99 latency, server CPU seconds, lookups per server CPU-second,
// and the daemon/reference ratios of lookups per CPU-second (target >= 0.90)
// and of p99 (target <= 1.2). Missing a target is a finding, not a failure:
// the exit status is non-zero only when the measurement itself failed
// (a server did not start, a reply was wrong).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/benchworld"
)

type options struct {
	bin      string
	duration time.Duration
	warmup   time.Duration
	conns    []int
	rounds   int
	json     bool
	// serverCPU, when not empty, pins both servers to these CPUs (a
	// taskset list) so that CPU placement, which makes single-connection
	// runs bimodal on small VMs, is the same for both; run the load
	// generator itself with taskset on the other CPUs.
	serverCPU string
	// upgrade is the defaults' upgrade setting: "none" measures rule-only
	// answers (MTA-STS off, DNS dead); "encrypt" is the shipped rules.yaml's
	// path: MTA-STS on, and lookups answered from the probe cache, which
	// holds what the daemon found probing a fake world (see world).
	upgrade string
	// redis, when set, makes the daemon one of a fleet (state.redis) with
	// the Redis at this host:port, to compare lookups per CPU-second with
	// and without (the lookup path never calls Redis).
	redis, redisPasswordFile string
}

func main() {
	// Hidden mode: the reference server, run by this same executable as a
	// child. Checked before flag parsing so it stays out of -h.
	if len(os.Args) == 3 && os.Args[1] == "-reference-server" {
		os.Exit(runReferenceServer(os.Args[2]))
	}

	var o options
	var conns string
	flag.StringVar(&o.bin, "bin", "", "path to the tlspolicyd executable (required)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured window per run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before each window")
	flag.StringVar(&conns, "conns", "1,8,64", "comma-separated connection counts")
	flag.IntVar(&o.rounds, "rounds", 3, "runs per target and concurrency; the median is reported")
	flag.BoolVar(&o.json, "json", false, "print JSON instead of tables")
	flag.StringVar(&o.upgrade, "upgrade", "none", "the daemon's defaults.upgrade: none (rule-only answers) or encrypt (the shipped path: MTA-STS on, answers from the probe cache)")
	flag.StringVar(&o.redis, "redis", "", "host:port of a Redis to make the daemon one of a fleet (state.redis); empty: alone")
	flag.StringVar(&o.redisPasswordFile, "redis-password-file", "", "the Redis password file (state.redis.password_file)")
	flag.StringVar(&o.serverCPU, "server-cpus", "", "pin both servers to these CPUs with taskset (e.g. 1); run loadgen itself under taskset -c 0")
	flag.Parse()
	var err error
	if o.conns, err = parseConns(conns); err != nil || o.bin == "" || o.rounds < 1 ||
		o.duration <= 0 || o.warmup < 0 || flag.NArg() > 0 {
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: -conns:", err)
		}
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted")
		}
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		stop()
		os.Exit(1)
	}
}

func parseConns(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad connection count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// target is a server under load.
type target struct {
	name  string // "reference" or "daemon"
	child *child
}

func run(ctx context.Context, o options) error {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("-bin: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "loadgen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	refAddr, err := freeAddr()
	if err != nil {
		return err
	}
	daemonAddr, err := freeAddr()
	if err != nil {
		return err
	}
	var w *benchworld.World
	if o.upgrade != "none" {
		if w, err = startWorld(dir); err != nil {
			return err
		}
		defer w.Close()
	}
	text, err := daemonConfig(daemonAddr, dir, w, o.upgrade, o.redisBlock())
	if err != nil {
		return err
	}
	config := filepath.Join(dir, "tlspolicyd.yaml")
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		return err
	}

	ref, err := startChild(ctx, "reference", o.pinned(self, "-reference-server", refAddr), refAddr, dir)
	if err != nil {
		return err
	}
	defer ref.stop()
	daemon, err := startChild(ctx, "daemon", o.pinned(bin, "serve", "-config", config), daemonAddr, dir)
	if err != nil {
		return err
	}
	defer daemon.stop()

	if w != nil {
		if err := probed(ctx, w, daemonAddr); err != nil {
			return daemon.failure(err)
		}
	}
	targets := []target{{"reference", ref}, {"daemon", daemon}}
	for _, t := range targets {
		got, err := answers(ctx, t.child.addr)
		if err != nil {
			return t.child.failure(fmt.Errorf("first lookups: %w", err))
		}
		for i, a := range got {
			fmt.Fprintf(os.Stderr, "%-9s %-24s -> %s\n", t.name, keys[i], a)
		}
	}

	rep := report{
		Duration: o.duration.String(),
		Warmup:   o.warmup.String(),
		Rounds:   o.rounds,
		CPUs:     runtime.NumCPU(),
		Keys:     keys,
	}
	for _, n := range o.conns {
		lv := level{Conns: n}
		for r := range o.rounds {
			// Alternate the order (R D, D R, R D ...) so that a slow drift of
			// the machine's state does not favour one target.
			order := targets
			if r%2 == 1 {
				order = []target{targets[1], targets[0]}
			}
			for _, t := range order {
				res, err := runLoad(ctx, loadConfig{
					addr:      t.child.addr,
					conns:     n,
					warmup:    o.warmup,
					duration:  o.duration,
					serverCPU: func() (time.Duration, error) { return processCPU(t.child.pid()) },
				})
				if err == nil && res.Errors > 0 {
					err = fmt.Errorf("%d bad replies, first: %w", res.Errors, res.FirstErr)
				}
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return t.child.failure(fmt.Errorf("%d connections, round %d: %w", n, r+1, err))
				}
				m := newMeasurement(r+1, t.name, res)
				fmt.Fprintf(os.Stderr, "conns=%-3d round %d/%d %-9s %9.0f lookups/s  p50 %7.1fµs  p99 %7.1fµs  server CPU %5.2fs  %9.0f lookups/CPU-s\n",
					n, r+1, o.rounds, t.name, m.LookupsPerSec, m.P50us, m.P99us, m.ServerCPUs, m.LookupsPerCPUs)
				if res.ServerCPU < 50*time.Second/time.Duration(clockTicks()) {
					fmt.Fprintln(os.Stderr, "  warning: under 50 clock ticks of server CPU; use a longer -duration for a precise figure")
				}
				lv.Runs = append(lv.Runs, m)
			}
		}
		lv.summarise()
		rep.Levels = append(rep.Levels, lv)
	}
	if o.json {
		return rep.writeJSON(os.Stdout)
	}
	rep.writeText(os.Stdout)
	fmt.Println()
	rep.writeMarkdown(os.Stdout)
	return nil
}

// daemonConfig is the daemon's configuration for the run: rules that give
// the key mix every kind of match. Without a world (w nil), MTA-STS is off
// and DNS points at a loopback port nobody listens on; with one, DNS is the
// world's and MTA-STS on, as shipped. Either way no lookup leaves the
// machine and the run measures the socketmap path, not the network.
func daemonConfig(listen, dir string, w *benchworld.World, upgrade, redis string) (string, error) {
	sources := ""
	if w == nil {
		dead, err := freeAddr()
		if err != nil {
			return "", err
		}
		sources = fmt.Sprintf("dns:\n  servers: [%q]\n  timeout: 1s\nmtasts:\n  enabled: false\n", dead)
	} else {
		sources = w.Config() + "mtasts:\n  enabled: true\n"
	}
	return fmt.Sprintf(`listen:
  socketmap: %s
%sstate:
  path: %s
%sdefaults:
  level: may
  upgrade: %s
destinations:
  - match: example.org
    level: verify
  - match: .example.org
    level: encrypt
  - match: "[relay.example.net]:587"
    level: secure
`, listen, sources, filepath.Join(dir, "state.db"), redis, upgrade), nil
}

// redisBlock is the state.redis of -redis, or "".
func (o options) redisBlock() string {
	if o.redis == "" {
		return ""
	}
	b := fmt.Sprintf("  redis:\n    addrs: [%q]\n", o.redis)
	if o.redisPasswordFile != "" {
		b += fmt.Sprintf("    password_file: %q\n", o.redisPasswordFile)
	}
	return b
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (listen on port 0, note the port, close).
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// child is a server process under test. Its stderr goes to a log file that
// is shown when something fails.
type child struct {
	name string
	addr string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid after done
}

// startChild runs path with args and waits (bounded) until addr accepts
// connections, or fails at once if the process exits first.
// pinned returns the command line of a server: argv itself, or run
// through taskset (which execs it, so the process measured is the server).
func (o options) pinned(argv ...string) []string {
	if o.serverCPU == "" {
		return argv
	}
	return append([]string{"taskset", "-c", o.serverCPU}, argv...)
}

func startChild(ctx context.Context, name string, argv []string, addr, dir string) (*child, error) {
	c := &child{name: name, addr: addr, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command(argv[0], argv[1:]...)
	c.cmd.Stdout = logf
	c.cmd.Stderr = logf
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()

	limit := time.After(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			conn.Close()
			return c, nil
		}
		select {
		case <-c.done:
			return nil, c.failure(errors.New("exited before accepting connections"))
		case <-limit:
			c.stop()
			return nil, c.failure(fmt.Errorf("not accepting connections on %s after 15s", addr))
		case <-ctx.Done():
			c.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop kills the process and waits for it; it is safe to call twice.
func (c *child) stop() {
	select {
	case <-c.done:
	default:
		c.cmd.Process.Kill()
		<-c.done
	}
}

// failure wraps err with the process's state and log, which usually says
// why (a config error, a panic).
func (c *child) failure(err error) error {
	state := "running"
	select {
	case <-c.done:
		state = fmt.Sprintf("exited (%v)", c.err)
	default:
	}
	log, _ := os.ReadFile(c.log)
	const keep = 4000
	if len(log) > keep {
		log = log[len(log)-keep:]
	}
	return fmt.Errorf("%s (%s, %s): %w\n--- %s log ---\n%s", c.name, strings.Join(c.cmd.Args, " "), state, err, c.name, log)
}
