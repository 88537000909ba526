package acceptance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Runs as anyone: the shipped rules.yaml serves for an ordinary
// user out of the box, its state beside it; under systemd a relative
// state.path is taken from $STATE_DIRECTORY; a state path that cannot be
// written says what to set.

// asNobody is the command prefix that runs a command as user nobody.
var asNobody = []string{"--reuid=nobody", "--regid=nogroup", "--clear-groups"}

// shippedPorts are the listen addresses of the shipped rules.yaml.
var shippedPorts = []string{"127.0.0.1:10028", "127.0.0.1:10029", "127.0.0.1:10030", "127.0.0.1:10031", "127.0.0.1:10032"}

// envWithout is daemonEnv without the variables named (and with extra
// ones after it).
func envWithout(names []string, extra ...string) []string {
	var env []string
next:
	for _, kv := range daemonEnv {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// command is one tlspolicyd run by hand: as another user (prefix: setpriv
// and its options), in a working directory, with an environment.
type command struct {
	prefix []string // e.g. setpriv --reuid=nobody ...; empty: as this user
	bin    string
	dir    string
	env    []string
}

func (c command) cmd(ctx context.Context, args ...string) *exec.Cmd {
	argv := append(append([]string{}, c.prefix...), c.bin)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = c.dir, c.env
	return cmd
}

// run runs a command to its end and returns its exit code and output.
func (c command) run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliLimit)
	defer cancel()
	cmd := c.cmd(ctx, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s: did not finish within %v; output:\n%s", strings.Join(cmd.Args, " "), cliLimit, out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %s: %v", strings.Join(cmd.Args, " "), err)
	}
	t.Logf("%s (in %s): exit %d\n%s", strings.Join(cmd.Args, " "), c.dir, cmd.ProcessState.ExitCode(), out)
	checkRaces(t, strings.Join(cmd.Args, " "), string(out))
	return cmd.ProcessState.ExitCode(), string(out)
}

// serve starts `serve` with args and waits until /healthz answers on
// httpAddr. The returned stop sends SIGTERM and returns the exit code and
// the log; the test's end stops it too.
func (c command) serve(t *testing.T, httpAddr string, args ...string) (stop func() (int, string)) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := c.cmd(context.Background(), append([]string{"serve"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	log := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	stopped := false
	stop = func() (int, string) {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(stopTimeout):
				cmd.Process.Kill()
				<-exited
				t.Errorf("tlspolicyd did not exit within %v of SIGTERM; killed", stopTimeout)
			}
		}
		return cmd.ProcessState.ExitCode(), log()
	}
	t.Cleanup(func() { stop() })
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	eventually(t, startTimeout, "tlspolicyd serve answering /healthz", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("tlspolicyd serve exited before serving:\n%s", log())
		default:
		}
		code, _, err := httpGet(client, "http://"+httpAddr+"/healthz")
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d %v", code, err)
	})
	return stop
}

// TestShippedRulesRunAsAnyone: the README's first command, as user
// nobody: the shipped rules.yaml (only its ports changed to free ones),
// in a folder that user can write, serves; the state file appears beside
// the configuration; the README's pin example works and says the pin is
// capped; a command from another working directory finds the same state.
// A state.path that user cannot write is refused naming what to set.
func TestShippedRulesRunAsAnyone(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("running a command as user nobody needs root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	// Everything nobody needs must be reachable by nobody: not under the
	// test's own temporary directories (mode 0700).
	base, err := os.MkdirTemp("", "tlspolicyd-anyone-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	conf := filepath.Join(base, "conf")
	rootOnly := filepath.Join(base, "root-only")
	for _, d := range []string{base, conf, rootOnly} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(conf, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "tlspolicyd")
	copyFile(t, daemonBin, bin, 0o755)

	shipped, err := os.ReadFile(filepath.Join("..", "..", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, len(shippedPorts))
	text := string(shipped)
	for i, p := range shippedPorts {
		if !strings.Contains(text, p) {
			t.Fatalf("the shipped rules.yaml no longer listens on %s; update this test", p)
		}
		text = strings.ReplaceAll(text, p, ports[i])
	}
	config := filepath.Join(conf, "rules.yaml")
	if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	nobody := command{prefix: append([]string{setpriv}, asNobody...), bin: bin, dir: conf,
		env: envWithout([]string{"STATE_DIRECTORY"})}

	// `tlspolicyd serve -config rules.yaml`, in the configuration's folder.
	stop := nobody.serve(t, ports[4], "-config", "rules.yaml")
	out, code, stderr := postmap(t, "[127.0.0.1]", "socketmap:inet:"+ports[0]+":tlspolicy")
	if code != 0 || out != may {
		t.Errorf("postmap -q [127.0.0.1] on the shipped rules: exit %d, %q (stderr %q), want %q", code, out, stderr, may)
	}
	statePath := filepath.Join(conf, "state.db")
	var st syscall.Stat_t
	if err := syscall.Stat(statePath, &st); err != nil || st.Uid != 65534 {
		t.Errorf("state file %s: %v, owner uid %d; want it created by nobody (65534) beside the configuration", statePath, err, st.Uid)
	}

	// The README's pin example, through the running daemon.
	capped := fmt.Sprintf("pinned verify, answered encrypt: capped by upgrade: encrypt at rules.yaml:%d", lineOf(t, text, "  upgrade: encrypt"))
	if code, out := nobody.run(t, "pins", "-config", "rules.yaml", "add", "partner.example", "verify"); code != 0 || !strings.Contains(out, capped) {
		t.Errorf("pins add partner.example verify: exit %d; want 0 and %q", code, capped)
	}
	code, log := stop()
	if code != 0 {
		t.Errorf("tlspolicyd serve as nobody exited %d after SIGTERM, want 0:\n%s", code, log)
	}
	if _, ok := findLine(log, "state loaded", "path="+statePath); !ok {
		t.Errorf("the log does not say the state was loaded from %s:\n%s", statePath, log)
	}
	checkRaces(t, "tlspolicyd serve as nobody", log)

	// From another working directory (where nobody can write nothing), the
	// configuration's folder still holds the state.
	elsewhere := nobody
	elsewhere.dir = "/"
	if code, out := elsewhere.run(t, "pins", "-config", config, "list"); code != 0 || !strings.Contains(out, "partner.example") {
		t.Errorf("pins list from /: exit %d; want 0 and the pin of partner.example from %s", code, statePath)
	}

	// A state path nobody cannot create: refused, naming what to set.
	abs := strings.Replace(text, "path: state.db", "path: "+filepath.Join(rootOnly, "tlspolicyd", "state.db"), 1)
	if abs == text {
		t.Fatal("the shipped rules.yaml no longer says path: state.db; update this test")
	}
	absConfig := filepath.Join(conf, "abs.yaml")
	if err := os.WriteFile(absConfig, []byte(abs), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = nobody.run(t, "check", "-config", absConfig)
	for _, want := range []string{
		fmt.Sprintf("%s:%d: state.path: ", absConfig, lineOf(t, abs, "path: "+rootOnly)),
		"user nobody", "set state.path to a file the user running tlspolicyd can write", "$STATE_DIRECTORY",
	} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("check with a state.path nobody cannot create: exit %d, want 1 and %q in the output", code, want)
		}
	}
}

// TestStateDirectory: with $STATE_DIRECTORY set, as systemd sets it for
// StateDirectory=, a relative state.path lives there: for serve, check and
// pins alike; an unusable one is refused saying where the path came from.
func TestStateDirectory(t *testing.T) {
	t.Parallel()
	dir, stateDir := t.TempDir(), t.TempDir()
	const relative = "path: state.db"
	template := strings.Replace(listenInet+hermetic+truthRules, "path: @DIR@/state.db", relative, 1)
	ports := freePorts(t, 4)
	config := filepath.Join(dir, "rules.yaml")
	text := strings.NewReplacer(phSocketmap, ports[0], phTCPTable, ports[1], phHTTP, ports[2], phDNS, ports[3]).Replace(template)
	if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	systemd := command{bin: daemonBin, dir: dir, env: envWithout([]string{"STATE_DIRECTORY"}, "STATE_DIRECTORY="+stateDir)}
	if code, _ := systemd.run(t, "check", "-config", config); code != 0 {
		t.Errorf("check with $STATE_DIRECTORY: exit %d, want 0", code)
	}
	if code, _ := systemd.run(t, "pins", "-config", config, "add", "partner.test", "encrypt"); code != 0 {
		t.Errorf("pins add with $STATE_DIRECTORY: exit %d, want 0", code)
	}
	statePath := filepath.Join(stateDir, "state.db")
	if _, err := os.Stat(statePath); err != nil {
		t.Errorf("the state file is not in $STATE_DIRECTORY: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a state file beside the configuration although $STATE_DIRECTORY is set: %v", err)
	}
	stop := systemd.serve(t, ports[2], "-config", config)
	checkLookup(t, "socketmap:inet:"+ports[0]+":tlspolicy", lookup{key: "partner.test", want: encrypt}, "")
	code, log := stop()
	if _, ok := findLine(log, "state loaded", "path="+statePath, "pins=1"); code != 0 || !ok {
		t.Errorf("serve with $STATE_DIRECTORY: exit %d, want 0 and \"state loaded\" from %s with the pin:\n%s", code, statePath, log)
	}

	// A $STATE_DIRECTORY under a regular file: refused, saying so.
	regular := filepath.Join(t.TempDir(), "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	broken := systemd
	broken.env = envWithout([]string{"STATE_DIRECTORY"}, "STATE_DIRECTORY="+filepath.Join(regular, "sub"))
	code, out := broken.run(t, "check", "-config", config)
	want := fmt.Sprintf(`%s:%d: state.path "state.db" is taken from $STATE_DIRECTORY (%s): `, config, lineOf(t, text, relative), filepath.Join(regular, "sub"))
	if code != 1 || !strings.HasPrefix(out, want) || !strings.Contains(out, "set state.path") {
		t.Errorf("check with $STATE_DIRECTORY under a regular file: exit %d; want 1 and a line starting %q that says to set state.path", code, want)
	}
}

// copyFile copies src to dst with the given mode.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
