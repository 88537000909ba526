package acceptance

import (
	"bufio"
	"context"
	"errors"
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
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// Bounds for the polling loops: nothing waits longer than this for an
// event, and the loops look every pollStep.
const (
	startTimeout = 10 * time.Second // until /healthz answers
	stopTimeout  = 15 * time.Second // from SIGTERM until the process is gone
	pollTimeout  = 5 * time.Second  // reloads and other asynchronous effects
	pollStep     = 20 * time.Millisecond
	ioTimeout    = 5 * time.Second // one reply on a raw connection
	postmapLimit = 60 * time.Second
)

// Placeholders a configuration template may use. startDaemon replaces them
// with free loopback addresses and the daemon's own temporary directory,
// the same way each time the file is rewritten.
const (
	phSocketmap = "@SOCKETMAP@" // 127.0.0.1:PORT
	phTCPTable  = "@TCPTABLE@"  // 127.0.0.1:PORT
	phHTTP      = "@HTTP@"      // 127.0.0.1:PORT
	phDNS       = "@DNS@"       // 127.0.0.1:PORT where nothing listens
	phPolicy    = "@POLICY@"    // 127.0.0.1:PORT, the policy delegation listener
	phExim      = "@EXIM@"      // 127.0.0.1:PORT, the Exim ${readsocket} listener
	phDir       = "@DIR@"       // the daemon's temporary directory
)

// hermetic is appended to every test configuration: it keeps the daemon off
// the network and the system's state directory. Nothing listens at @DNS@, so
// a query the daemon might make fails at once; the expected answers are all
// configured floors.
const hermetic = `dns:
  servers: ["@DNS@"]
  timeout: 1s
state:
  path: @DIR@/state.db
mtasts:
  enabled: false
`

// daemon is one running tlspolicyd serve.
type daemon struct {
	dir        string // its temporary directory (config, socket, state, log)
	configPath string
	logPath    string // stdout and stderr
	replacer   *strings.Replacer
	listen     map[string]string // the listen block after substitution
	http       string            // host:port of the HTTP listener

	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done is closed
	stopped bool
}

// startDaemon writes configYAML (with the placeholders above replaced) and
// starts tlspolicyd serve on it. It returns once /healthz answers 200. The
// daemon is stopped with SIGTERM when the test ends, and must then exit 0;
// no line of its log may carry an attribute twice; its log is shown if
// the test failed.
func startDaemon(t *testing.T, configYAML string) *daemon {
	t.Helper()
	if !strings.Contains(configYAML, phHTTP) {
		t.Fatalf("startDaemon: the configuration needs an http listener (%s) to know when the daemon serves", phHTTP)
	}
	dir := t.TempDir()
	// A port picked free may be taken again before the daemon binds it; try
	// again with new ports if that happened.
	for attempt := 1; ; attempt++ {
		d, err := tryStart(t, dir, configYAML)
		if err == nil {
			return d
		}
		log, _ := os.ReadFile(filepath.Join(dir, "daemon.log"))
		if attempt < 3 && strings.Contains(string(log), "address already in use") {
			t.Logf("start attempt %d: a port was taken, retrying: %v", attempt, err)
			continue
		}
		t.Logf("daemon log:\n%s", log)
		t.Fatalf("starting tlspolicyd: %v", err)
	}
}

func tryStart(t *testing.T, dir, configYAML string) (*daemon, error) {
	ports := freePorts(t, 6)
	d := &daemon{
		dir:        dir,
		configPath: filepath.Join(dir, "rules.yaml"),
		logPath:    filepath.Join(dir, "daemon.log"),
		replacer: strings.NewReplacer(
			phSocketmap, ports[0],
			phTCPTable, ports[1],
			phHTTP, ports[2],
			phDNS, ports[3],
			phPolicy, ports[4],
			phExim, ports[5],
			phDir, dir,
		),
		done: make(chan struct{}),
	}
	text := d.writeConfig(t, configYAML)
	var doc struct {
		Listen map[string]string `yaml:"listen"`
	}
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("test configuration is not YAML: %v\n%s", err, text)
	}
	d.listen = doc.Listen
	d.http = doc.Listen["http"]

	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own copy
	d.cmd = exec.Command(daemonBin, "serve", "-config", d.configPath)
	d.cmd.Env = daemonEnv
	d.cmd.Stdout = logf
	d.cmd.Stderr = logf
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.done)
	}()

	deadline := time.Now().Add(startTimeout)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-d.done:
			return nil, fmt.Errorf("the daemon exited before serving: %v", d.waitErr)
		default:
		}
		if code, _, err := httpGet(client, "http://"+d.http+"/healthz"); err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("/healthz on %s did not answer 200 within %v", d.http, startTimeout)
		}
		time.Sleep(pollStep)
	}
	client.CloseIdleConnections()

	t.Cleanup(func() {
		if !d.stopped {
			if code := d.stop(t, syscall.SIGTERM); code != 0 {
				t.Errorf("tlspolicyd exited with %d after SIGTERM, want 0", code)
			}
		}
		checkLogAttributes(t, d)
		// The reports are in the log, shown below.
		if log, _ := os.ReadFile(d.logPath); strings.Contains(string(log), raceMarker) {
			t.Errorf("tlspolicyd serve (%s): the race detector reported a data race (%q in the daemon log)", d.configPath, raceMarker)
		}
		if t.Failed() {
			log, _ := os.ReadFile(d.logPath)
			t.Logf("daemon log (%s):\n%s", d.configPath, log)
		}
	})
	return d, nil
}

// writeConfig replaces the placeholders in text and writes it as the
// daemon's configuration file. It returns what was written.
func (d *daemon) writeConfig(t *testing.T, text string) string {
	t.Helper()
	text = d.replacer.Replace(text)
	if err := os.WriteFile(d.configPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return text
}

// reload asks the daemon to reload its configuration.
func (d *daemon) reload(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
}

// stop sends sig and waits, bounded, for the daemon to exit. It returns the
// exit code (-1 if a signal ended it).
func (d *daemon) stop(t *testing.T, sig os.Signal) int {
	t.Helper()
	d.stopped = true
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Errorf("sending %v: %v", sig, err)
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		d.kill()
		t.Errorf("tlspolicyd did not exit within %v of %v; killed", stopTimeout, sig)
		return -1
	}
	if d.waitErr != nil {
		var ee *exec.ExitError
		if !errors.As(d.waitErr, &ee) {
			t.Errorf("waiting for tlspolicyd: %v", d.waitErr)
			return -1
		}
		if ee.ExitCode() < 0 {
			t.Logf("tlspolicyd: %v", ee.ProcessState)
		}
	}
	return d.cmd.ProcessState.ExitCode()
}

func (d *daemon) kill() {
	d.stopped = true
	_ = d.cmd.Process.Kill()
	<-d.done
}

// socketmap returns the Postfix table name of socketmap map name on this
// daemon: socketmap:inet:HOST:PORT:NAME or socketmap:unix:PATH:NAME.
func (d *daemon) socketmap(t *testing.T, name string) string {
	t.Helper()
	addr := d.listen["socketmap"]
	if addr == "" {
		t.Fatal("the daemon has no socketmap listener")
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "socketmap:unix:" + path + ":" + name
	}
	return "socketmap:inet:" + addr + ":" + name
}

// tcpTable returns the Postfix table name of the daemon's tcp_table listener.
func (d *daemon) tcpTable(t *testing.T) string {
	t.Helper()
	addr := d.listen["tcptable"]
	if addr == "" {
		t.Fatal("the daemon has no tcptable listener")
	}
	return "tcp:" + addr
}

// dial opens a raw connection to one of the daemon's listeners ("socketmap",
// "tcptable").
func (d *daemon) dial(t *testing.T, listener string) net.Conn {
	t.Helper()
	addr := d.listen[listener]
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	c, err := net.DialTimeout(network, addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s %s: %v", listener, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// healthz returns the status code of GET /healthz, or an error.
func (d *daemon) healthz() (int, error) {
	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	code, _, err := httpGet(client, "http://"+d.http+"/healthz")
	return code, err
}

// metric returns the value of the series name{labels...} scraped from
// /metrics: the sum over the series that carry all the given labels (so nil
// labels sum a whole metric). A series that is absent counts 0.
func (d *daemon) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	v, _ := d.metricFound(t, name, labels)
	return v
}

// metricFound is metric, and whether any series matched.
func (d *daemon) metricFound(t *testing.T, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	code, body, err := httpGet(client, "http://"+d.http+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, %v", code, err)
	}
	samples, err := parseMetrics(body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	var sum float64
	found := false
	for _, s := range samples {
		if s.name != name || !hasLabels(s.labels, labels) {
			continue
		}
		sum += s.value
		found = true
	}
	return sum, found
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func httpGet(client *http.Client, url string) (int, string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, string(body), err
}

// postmap runs postmap -q KEY TABLE with the test main.cf and returns its
// standard output (without the final newline), exit code and standard
// error.
func postmap(t *testing.T, key, table string) (out string, exit int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), postmapLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, postmapBin, "-c", postfixConf, "-q", key, table)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("postmap -q %q %s: no answer within %v; stderr: %s", key, table, postmapLimit, se.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running postmap: %v", err)
	}
	return strings.TrimSuffix(so.String(), "\n"), cmd.ProcessState.ExitCode(), se.String()
}

// lookup is one postmap query and what it must give.
type lookup struct {
	key  string
	want string // the value printed, when found
	res  result
}

// result is how a postmap query ended.
type result int

const (
	found    result = iota // exit 0, the value on stdout
	notFound               // exit 1, nothing printed, no fatal error
	fatal                  // exit 1, "fatal" on stderr (TEMP, PERM, refused)
)

func (r result) String() string {
	return [...]string{"found", "not found", "fatal error"}[r]
}

// checkLookup runs postmap for l against table and reports any difference
// as key, expected and got.
func checkLookup(t *testing.T, table string, l lookup, stderrHas string) {
	t.Helper()
	out, code, stderr := postmap(t, l.key, table)
	var got result
	switch {
	case code == 0:
		got = found
	case strings.Contains(stderr, "fatal"):
		got = fatal
	default:
		got = notFound
	}
	if got != l.res || got == found && out != l.want || got != found && out != "" {
		t.Errorf("postmap -q %q %s:\n  want %s %q\n  got  %s %q (exit %d, stderr %q)",
			l.key, table, l.res, l.want, got, out, code, strings.TrimSpace(stderr))
		return
	}
	if stderrHas != "" && !strings.Contains(stderr, stderrHas) {
		t.Errorf("postmap -q %q %s: stderr %q does not contain %q", l.key, table, stderr, stderrHas)
	}
}

// eventually polls cond every pollStep until it holds, and fails the test
// with cond's last status if it does not within timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, timeout, status)
		}
		time.Sleep(pollStep)
	}
}

// freePorts returns n distinct loopback addresses that were free a moment
// ago. All are held open together so that they differ.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

// netstring frames s as a netstring.
func netstring(s string) string {
	return strconv.Itoa(len(s)) + ":" + s + ","
}

// readNetstring reads one netstring of at most max bytes.
func readNetstring(r *bufio.Reader, max int) (string, error) {
	head, err := r.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(head, ":"))
	if err != nil || n < 0 || n > max {
		return "", fmt.Errorf("bad netstring length %q", head)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", fmt.Errorf("netstring body: %w", err)
	}
	if buf[n] != ',' {
		return "", fmt.Errorf("netstring %q does not end with a comma", buf)
	}
	return string(buf[:n]), nil
}

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics parses the Prometheus text exposition format, enough for
// tests: comments are skipped, label values are unescaped, a trailing
// timestamp is ignored.
func parseMetrics(text string) ([]sample, error) {
	var out []sample
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", i+1, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ \t")
	if end <= 0 {
		return s, errors.New("no value")
	}
	s.name, line = line[:end], line[end:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " \t,")
			if line == "" {
				return s, errors.New("unterminated labels")
			}
			if line[0] == '}' {
				line = line[1:]
				break
			}
			eq := strings.Index(line, "=")
			if eq <= 0 || len(line) < eq+2 || line[eq+1] != '"' {
				return s, errors.New("bad label")
			}
			key := strings.TrimSpace(line[:eq])
			line = line[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(line); j++ {
				c := line[j]
				if c == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[j])
					}
					continue
				}
				if c == '"' {
					line = line[j+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, errors.New("unterminated label value")
			}
			s.labels[key] = val.String()
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, errors.New("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.value = v
	return s, nil
}
