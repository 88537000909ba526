// Command statebench measures tlspolicyd's state store on the built
// daemon, in one of two ways.
//
// Start-up (the default): it builds a state file holding -findings
// destinations' findings (each as a probe of one or two verified MX hosts
// would leave them, gathered within the last five hours, so still fresh at
// the default probe.ttl of 6h) and -pins pins, then starts the daemon on
// it -runs times and reports, for each start, the time from exec to
// /healthz 200, the CPU time it used until then, the process's peak
// resident memory (VmHWM) at that moment and what of it is heap or pages
// of the state file, and the file's size. Then it waits -settle (what the
// daemon does in the background after a start: it reads the destinations
// of the decision history and prunes) and reports the peak again; then it
// asks for the list of known destinations (GET
// /api/v1/destinations?limit=1, again while the daemon answers 503 because
// it is still reading them), as the status page or a script would, and
// reports when the list came and the peak after it. A file already in
// -dir is reused.
//
//	go build -o /tmp/tlspolicyd . && go run ./tools/statebench -bin /tmp/tlspolicyd \
//		[-dir DIR] [-findings 1000000] [-pins 100000] [-runs 5] [-settle 3s] [-history | -legacy]
//
// -history also writes each destination's first answer to the decision
// history, as a daemon that answered for them keeps it. -legacy writes the
// findings as releases before the compact format did (JSON in the
// "probes" bucket), to measure those releases or the migration of their
// files.
//
// Misses (-nxdomain N): it starts a fake DNS server that answers NXDOMAIN
// for every name and the daemon on an empty state file, looks up N
// destinations that do not exist, one at a time over -conns socketmap
// connections (each lookup waits for its probe), and reports the
// lookups' latency and the state file's size after the daemon stopped.
//
//	go run ./tools/statebench -bin /tmp/tlspolicyd -nxdomain 20000 [-conns 1]
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "path to the tlspolicyd executable (required)")
	flag.StringVar(&o.dir, "dir", "", "directory of the state file and the configuration (default: a new temporary one)")
	flag.IntVar(&o.findings, "findings", 1000000, "destinations with findings in the state file")
	flag.IntVar(&o.pins, "pins", 100000, "pins in the state file (of the first destinations)")
	flag.IntVar(&o.runs, "runs", 5, "starts to measure")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "how long after /healthz to read the peak RSS again, before asking for the list")
	flag.BoolVar(&o.legacy, "legacy", false, "write findings in the JSON format of releases before the compact one")
	flag.BoolVar(&o.history, "history", false, "also write each destination's first answer to the decision history (not with -legacy)")
	flag.IntVar(&o.nxdomain, "nxdomain", 0, "measure this many misses of destinations that do not exist instead")
	flag.IntVar(&o.conns, "conns", 1, "with -nxdomain: socketmap connections, one lookup outstanding on each")
	flag.Parse()
	if o.bin == "" || o.runs < 1 || o.legacy && o.history || o.findings < 0 || o.pins < 0 || o.pins > o.findings || o.nxdomain < 0 || o.conns < 1 || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if o.dir == "" {
		d, err := os.MkdirTemp("", "statebench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "statebench:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	var err error
	if o.nxdomain > 0 {
		err = misses(o)
	} else {
		err = startups(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "statebench:", err)
		os.Exit(1)
	}
}

type options struct {
	bin, dir             string
	findings, pins, runs int
	legacy, history      bool
	nxdomain, conns      int
	settle               time.Duration
}

func startups(o options) error {
	path := filepath.Join(o.dir, "state.db")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		start := time.Now()
		if err := generate(path, o.findings, o.pins, o.legacy, o.history, time.Now()); err != nil {
			return err
		}
		fmt.Printf("wrote %d findings and %d pins (legacy %v, history %v) in %v\n", o.findings, o.pins, o.legacy, o.history,
			time.Since(start).Round(time.Millisecond))
	} else {
		fmt.Printf("reusing %s\n", path)
	}
	for i := range o.runs {
		size, err := fileSize(path)
		if err != nil {
			return err
		}
		d, err := launch(o.bin, o.dir, path, "127.0.0.1:1")
		if err != nil {
			return err
		}
		mem, err := readMemory(d.cmd.Process.Pid)
		if err != nil {
			d.cmd.Process.Kill()
			return err
		}
		cpu, err := cpuTime(d.cmd.Process.Pid)
		if err != nil {
			d.cmd.Process.Kill()
			return err
		}
		time.Sleep(o.settle)
		settled, err := readMemory(d.cmd.Process.Pid)
		if err != nil {
			d.cmd.Process.Kill()
			return err
		}
		listStart := time.Now()
		listed, err := d.listed()
		if err != nil {
			d.cmd.Process.Kill()
			return err
		}
		listTook := time.Since(listStart)
		afterList, err := readMemory(d.cmd.Process.Pid)
		if err != nil {
			d.cmd.Process.Kill()
			return err
		}
		if err := d.stop(); err != nil {
			return err
		}
		fmt.Printf("run %d: file %.1f MiB, start-up %v (CPU %v), peak RSS %.0f MiB (now %.0f MiB heap and %.0f MiB of mapped files); "+
			"%v later peak RSS %.0f MiB (now %.0f MiB heap, %.0f MiB files); list of known destinations at %v (asked for %v), "+
			"then peak RSS %.0f MiB (now %.0f MiB heap, %.0f MiB files); %s\n",
			i+1, float64(size)/(1<<20), d.took.Round(time.Millisecond), cpu, mib(mem.peak), mib(mem.anon), mib(mem.file),
			o.settle, mib(settled.peak), mib(settled.anon), mib(settled.file), listed.Round(time.Millisecond), listTook.Round(time.Millisecond),
			mib(afterList.peak), mib(afterList.anon), mib(afterList.file),
			d.logLines("state loaded", "stored findings moved", "decision history indexed", "destinations of the decision history read"))
	}
	size, err := fileSize(path)
	if err != nil {
		return err
	}
	fmt.Printf("file after the runs: %d bytes (%.1f MiB)\n", size, float64(size)/(1<<20))
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// daemon is a running tlspolicyd.
type daemon struct {
	cmd       *exec.Cmd
	done      chan error
	log       string
	socketmap string
	http      string
	started   time.Time
	took      time.Duration // exec to /healthz 200
}

// launch starts the daemon on the state file, its DNS server dnsAddr, and
// returns once it answers /healthz.
func launch(bin, dir, statePath, dnsAddr string) (*daemon, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "bench.yaml")
	text := fmt.Sprintf(`listen:
  socketmap: %s
  http: %s
dns:
  servers: [%q]
  timeout: 2s
probe:
  wait: 5s
state:
  path: %s
mtasts:
  enabled: false
`, ports[0], ports[1], dnsAddr, statePath)
	if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
		return nil, err
	}
	d := &daemon{log: filepath.Join(dir, "daemon.log"), socketmap: ports[0], http: ports[1], done: make(chan error, 1)}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d.cmd = exec.Command(bin, "serve", "-config", config)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	client := &http.Client{Timeout: time.Second}
	t0 := time.Now()
	d.started = t0
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.done <- d.cmd.Wait() }()
	for {
		resp, err := client.Get("http://" + ports[1] + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				d.took = time.Since(t0)
				return d, nil
			}
		}
		select {
		case err := <-d.done:
			log, _ := os.ReadFile(d.log)
			return nil, fmt.Errorf("the daemon exited before serving: %v\n%s", err, log)
		case <-time.After(2 * time.Millisecond):
		}
		if time.Since(t0) > 5*time.Minute {
			d.cmd.Process.Kill()
			return nil, errors.New("the daemon did not answer /healthz within 5 minutes")
		}
	}
}

// listed asks for the list of known destinations until it comes, and
// returns the time from exec until then.
func (d *daemon) listed() (time.Duration, error) {
	client := &http.Client{Timeout: time.Minute}
	for {
		resp, err := client.Get("http://" + d.http + "/api/v1/destinations?limit=1")
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return time.Since(d.started), nil
		case http.StatusServiceUnavailable:
			if time.Since(d.started) > 5*time.Minute {
				return 0, errors.New("no list of known destinations within 5 minutes")
			}
			time.Sleep(10 * time.Millisecond)
		default:
			return 0, fmt.Errorf("GET /api/v1/destinations: %s", resp.Status)
		}
	}
}

// stop stops the daemon with SIGTERM and waits for it.
func (d *daemon) stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		return errors.New("the daemon did not stop within 30s of SIGTERM")
	}
}

// logLines returns the daemon's log lines that hold any of what.
func (d *daemon) logLines(what ...string) string {
	log, _ := os.ReadFile(d.log)
	var out []string
	for line := range strings.Lines(string(log)) {
		for _, w := range what {
			if strings.Contains(line, w) {
				out = append(out, strings.TrimSpace(line))
				break
			}
		}
	}
	return strings.Join(out, " ")
}

// memory is a process's peak resident memory (VmHWM) and what is resident
// now, in anonymous memory (the heap) and in pages of mapped files (the
// state file: the kernel can take those back), in bytes.
type memory struct{ peak, anon, file int64 }

// readMemory reads a process's memory figures from /proc.
func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	fields := map[string]*int64{"VmHWM:": &m.peak, "RssAnon:": &m.anon, "RssFile:": &m.file}
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, _ := strings.Cut(s.Text(), "\t")
		if p := fields[name]; p != nil {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return memory{}, err
			}
			*p = kb << 10
		}
	}
	if m.peak == 0 {
		return memory{}, errors.New("no VmHWM in /proc status")
	}
	return m, s.Err()
}

// cpuTime reads the CPU time (user and system) a process has used from
// /proc, at the kernel's clock tick of 10ms.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses: state
	// is the first, utime and stime the 12th and 13th.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, errors.New("unexpected /proc stat")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

func freePorts(n int) ([]string, error) {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}
