package acceptance

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifySocket stands in for systemd's notification socket (sd_notify(3)):
// a datagram socket whose path goes in NOTIFY_SOCKET, each message of the
// daemon one datagram.
type notifySocket struct {
	path string
	msgs chan string
}

// newNotifySocket listens on a notification socket in dir, which any user
// may write to (the daemon may run as another user), until the test ends.
func newNotifySocket(t *testing.T, dir string) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan string, 64)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(n.path, 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// env is the NOTIFY_SOCKET variable naming the socket.
func (n *notifySocket) env() string { return "NOTIFY_SOCKET=" + n.path }

// next returns the next message, or fails the test if none comes within
// limit; exited, if not nil, ends the wait early when the process is gone.
func (n *notifySocket) next(t *testing.T, limit time.Duration, what string, exited <-chan struct{}) string {
	t.Helper()
	select {
	case m := <-n.msgs:
		return m
	case <-exited:
		t.Fatalf("%s: the daemon exited before sending it", what)
	case <-time.After(limit):
		t.Fatalf("%s: no notification within %v", what, limit)
	}
	return ""
}

// notifyFields splits a notification into its VARIABLE=value lines.
func notifyFields(msg string) map[string]string {
	fields := map[string]string{}
	for _, l := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			fields[k] = v
		}
	}
	return fields
}

// notifyConfig is the daemon configuration of TestSystemdNotify: every
// listener, as a unit ordered before Postfix and Exim needs them all.
const notifyConfig = `listen:
  socketmap: @SOCKETMAP@
  tcptable: @TCPTABLE@
  policy: @POLICY@
  exim: @EXIM@
  http: @HTTP@
` + hermetic + rules

// TestSystemdNotify runs the daemon as systemd runs a unit of Type=notify,
// with NOTIFY_SOCKET naming a datagram socket of the test, and checks what
// it says: READY=1 once it serves (when the message arrives, every
// listener already accepts a connection, and the socketmap answers on it),
// RELOADING=1 with MONOTONIC_USEC and then READY=1 around each SIGHUP,
// taken or refused, and STOPPING=1 on SIGTERM, then exit 0. A daemon that
// cannot start (a port taken) exits without READY=1, so that systemd fails
// the unit instead of ordering Postfix after it.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	t.Run("group", func(t *testing.T) {
		t.Run("ready, reloading, stopping", func(t *testing.T) {
			t.Parallel()
			dir := sharedTempDir(t)
			notify := newNotifySocket(t, dir)
			ports := freePorts(t, 6)
			listeners := map[string]string{"socketmap": ports[0], "tcptable": ports[1], "policy": ports[2], "exim": ports[3], "http": ports[4]}
			config := writeNotifyConfig(t, dir, notifyConfig, ports)
			cmd, exited := startNotified(t, dir, config, notify)

			ready := notifyFields(notify.next(t, startTimeout, "READY=1", exited))
			for name, addr := range listeners {
				c, err := net.DialTimeout("tcp", addr, ioTimeout)
				if err != nil {
					t.Errorf("at READY=1, listen.%s (%s) does not accept: %v", name, addr, err)
					continue
				}
				c.Close()
			}
			if out, exit, stderr := postmap(t, "example.org", "socketmap:inet:"+listeners["socketmap"]+":tlspolicy"); exit != 0 || out != verify {
				t.Errorf("at READY=1, postmap -q example.org: exit %d, %q (%s), want %q", exit, out, stderr, verify)
			}
			if ready["READY"] != "1" || !strings.Contains(ready["STATUS"], "serving 5 rules") {
				t.Errorf("first notification %q, want READY=1 with a STATUS saying what is served", ready)
			}

			reload := func(what string) (reloading, readyAgain map[string]string) {
				t.Helper()
				if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				reloading = notifyFields(notify.next(t, pollTimeout, what+": RELOADING=1", exited))
				readyAgain = notifyFields(notify.next(t, pollTimeout, what+": READY=1", exited))
				if reloading["RELOADING"] != "1" || reloading["MONOTONIC_USEC"] == "" {
					t.Errorf("%s: %q, want RELOADING=1 with MONOTONIC_USEC", what, reloading)
				}
				if readyAgain["READY"] != "1" {
					t.Errorf("%s: %q after RELOADING=1, want READY=1", what, readyAgain)
				}
				return reloading, readyAgain
			}
			first, _ := reload("a valid reload")
			if err := os.WriteFile(config, []byte("destinations: [\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			second, refused := reload("a refused reload")
			if a, b := usec(t, first), usec(t, second); a >= b {
				t.Errorf("MONOTONIC_USEC did not grow from one reload to the next: %s, then %s", first["MONOTONIC_USEC"], second["MONOTONIC_USEC"])
			}
			if !strings.Contains(refused["STATUS"], "refused") {
				t.Errorf("after a refused reload the STATUS is %q, want it to say the reload was refused", refused["STATUS"])
			}

			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if m := notify.next(t, stopTimeout, "STOPPING=1", exited); m != "STOPPING=1" {
				t.Errorf("on SIGTERM the daemon said %q, want STOPPING=1", m)
			}
			if code := waitExit(t, cmd, exited); code != 0 {
				t.Errorf("exit status %d after SIGTERM, want 0", code)
			}
		})

		t.Run("no READY=1 when a listener cannot be opened", func(t *testing.T) {
			t.Parallel()
			dir := sharedTempDir(t)
			notify := newNotifySocket(t, dir)
			ports := freePorts(t, 6)
			taken, err := net.Listen("tcp", ports[2]) // listen.policy
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Close()
			cmd, exited := startNotified(t, dir, writeNotifyConfig(t, dir, notifyConfig, ports), notify)
			if code := waitExit(t, cmd, exited); code != 1 {
				t.Errorf("exit status %d with listen.policy taken, want 1", code)
			}
			// The process is gone: whatever it sent is in the socket.
			time.Sleep(100 * time.Millisecond)
			for {
				select {
				case m := <-notify.msgs:
					if notifyFields(m)["READY"] == "1" {
						t.Errorf("the daemon said READY=1 (%q) though it could not open listen.policy", m)
					}
					continue
				default:
				}
				break
			}
		})
	})
}

// writeNotifyConfig writes a configuration template into dir with ports
// (from freePorts(t, 6)) put in for its listeners and DNS server.
func writeNotifyConfig(t *testing.T, dir, template string, ports []string) string {
	t.Helper()
	return writeShared(t, dir, "rules.yaml", strings.NewReplacer(
		phSocketmap, ports[0], phTCPTable, ports[1], phPolicy, ports[2], phExim, ports[3], phHTTP, ports[4],
		phDNS, ports[5], phDir, dir,
	).Replace(template))
}

// startNotified starts tlspolicyd serve on config with NOTIFY_SOCKET set,
// logging to dir/daemon.log; the returned channel is closed when it has
// exited. It is killed, if still running, when the test ends, and its log
// is shown if the test failed or the race detector reported in it.
func startNotified(t *testing.T, dir, config string, notify *notifySocket) (*exec.Cmd, chan struct{}) {
	t.Helper()
	logPath := filepath.Join(dir, "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(daemonBin, "serve", "-config", config)
	// A copy: daemonEnv is shared by every test, and appending to it in
	// place would hand one test's socket to another's daemon.
	cmd.Env = append(slices.Clip(daemonEnv), notify.env())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		log, _ := os.ReadFile(logPath)
		checkRaces(t, "tlspolicyd serve", string(log))
		if t.Failed() {
			t.Logf("daemon log:\n%s", log)
		}
	})
	return cmd, exited
}

// waitExit waits, bounded, for the process to exit and returns its exit
// status.
func waitExit(t *testing.T, cmd *exec.Cmd, exited <-chan struct{}) int {
	t.Helper()
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		t.Fatalf("tlspolicyd did not exit within %v", stopTimeout)
	}
	return cmd.ProcessState.ExitCode()
}

// usec is the MONOTONIC_USEC of a notification, a number.
func usec(t *testing.T, fields map[string]string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(fields["MONOTONIC_USEC"], 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC of %q: %v", fields, err)
	}
	return n
}
