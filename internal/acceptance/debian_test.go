package acceptance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// debVersion marks the package this test builds: an installed tlspolicyd
// of this version is a leftover of an interrupted run, which the test may
// purge; any other is someone's, which it leaves alone.
const debVersion = "0.0.0~acceptance"

// The paths the package installs and the unit names.
const (
	debBinary  = "/usr/sbin/tlspolicyd"
	debUnit    = "/lib/systemd/system/tlspolicyd.service"
	debConfig  = "/etc/tlspolicyd/rules.yaml"
	debWantsIn = "/etc/systemd/system/multi-user.target.wants/tlspolicyd.service"
)

// TestDebianPackage builds the Debian package with tools/mkdeb (the
// daemon binary of this run, fast compression), installs it on this
// machine with dpkg -i, and runs it as its systemd unit would, without
// systemd: the unit's ExecStartPre and ExecStart command lines, as an
// unprivileged user of systemd's dynamic range that owns the unit's
// StateDirectory, with its UMask and a notification socket for Type=notify.
// Then postmap -q answers through the installed daemon with the installed
// configuration. The configuration is edited in place, as an administrator
// would edit the conffile: other ports (other tests use the shipped ones)
// and an unreachable resolver (the test stays off the internet).
//
// It also checks what the package is: its files and conffile, that
// installing without systemd starts nothing, that systemd-analyze verify
// accepts the installed unit, that dpkg -r keeps the changed conffile, and
// that dpkg --purge leaves nothing behind: files, state, enablement.
//
// It needs root and a machine where systemd is not the running init (else
// installing would start the packaged daemon for real); the state
// directory /var/lib/tlspolicyd, if something else made it, is moved
// aside and put back.
func TestDebianPackage(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("the package test installs a package with dpkg: run the tests as root")
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		t.Skip("systemd is the running init here: installing the package would start the daemon for real")
	}
	if v := installedVersion(t); v != "" {
		if v != debVersion {
			t.Fatalf("tlspolicyd %s is installed on this machine; this test installs and purges its own package, and leaves that one alone", v)
		}
		t.Logf("purging tlspolicyd %s, left by an interrupted run", v)
		dpkg(t, "--purge", "tlspolicyd")
	}
	keepStateDir(t)
	tmp := sharedTempDir(t)

	// Build the package.
	start := time.Now()
	mkdeb := filepath.Join(tmp, "mkdeb")
	goBuild := exec.Command("go", "build", "-o", mkdeb, "./tools/mkdeb")
	goBuild.Dir = filepath.Join("..", "..")
	if out, err := goBuild.CombinedOutput(); err != nil {
		t.Fatalf("go build ./tools/mkdeb: %v\n%s", err, out)
	}
	build := exec.Command(mkdeb, "-binary", daemonBin, "-version", debVersion, "-compression", "gzip:1", "-o", tmp)
	build.Dir = filepath.Join("..", "..")
	out, err := build.Output()
	if err != nil {
		t.Fatalf("mkdeb: %v\n%s", err, stderrOf(err))
	}
	deb := strings.TrimSpace(string(out))
	t.Logf("built %s in %v", filepath.Base(deb), time.Since(start).Round(time.Millisecond))
	if got := mustRun(t, "dpkg-deb", "-f", deb, "Package", "Version"); got != "Package: tlspolicyd\nVersion: "+debVersion+"\n" {
		t.Errorf("dpkg-deb -f: %q", got)
	}
	if got := mustRun(t, "dpkg-deb", "--info", deb, "conffiles"); strings.TrimSpace(got) != debConfig {
		t.Errorf("conffiles: %q, want %s alone", got, debConfig)
	}

	// Install it.
	t.Cleanup(func() { purgeAndCheck(t) })
	installed := dpkg(t, "-i", deb)
	if !strings.Contains(installed, "systemd is not running; nothing started") {
		t.Errorf("dpkg -i did not say that nothing was started:\n%s", installed)
	}
	for _, p := range []string{debBinary, debUnit, debConfig, "/usr/share/doc/tlspolicyd/README.md",
		"/usr/share/doc/tlspolicyd/examples/postfix/main.cf"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if pids := processesOf(debBinary); len(pids) > 0 {
		t.Errorf("installing without systemd started %s (pids %v)", debBinary, pids)
	}
	if target, err := os.Readlink(debWantsIn); err != nil || target != debUnit {
		t.Errorf("the unit is not enabled for multi-user.target: %s -> %q (%v)", debWantsIn, target, err)
	}
	if got := mustRun(t, "systemd-analyze", "verify", debUnit); got != "" {
		t.Errorf("systemd-analyze verify %s:\n%s", debUnit, got)
	}

	// Run it as the unit would.
	unit := readUnit(t, debUnit)
	ports := freePorts(t, 6)
	editConffile(t, ports)
	svc := serviceUser(t, unit)
	stateDir := filepath.Join("/var/lib", unit["StateDirectory"])
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(stateDir, svc.uid, svc.gid); err != nil {
		t.Fatal(err)
	}
	notify := newNotifySocket(t, tmp)
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
		"STATE_DIRECTORY=" + stateDir,
		notify.env(),
		// The packaged binary is this run's, built with the race
		// detector: no second's wait at exit.
		"GORACE=atexit_sleep_ms=0",
	}
	if out, err := asService(svc, unit["UMask"], env, commandLine(t, unit, "ExecStartPre")).CombinedOutput(); err != nil {
		t.Fatalf("ExecStartPre: %v\n%s", err, out)
	}
	logPath := filepath.Join(tmp, "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	daemon := asService(svc, unit["UMask"], env, commandLine(t, unit, "ExecStart"))
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		daemon.Wait()
		close(exited)
	}()
	defer func() {
		select {
		case <-exited:
		default:
			daemon.Process.Kill()
			<-exited
		}
		log, _ := os.ReadFile(logPath)
		checkRaces(t, "the installed tlspolicyd", string(log))
		if t.Failed() {
			t.Logf("the installed daemon's log:\n%s", log)
		}
	}()
	if m := notifyFields(notify.next(t, startTimeout, "READY=1", exited)); m["READY"] != "1" {
		t.Fatalf("the installed daemon's first notification is %q, want READY=1", m)
	}
	// No rule names example.org and no resolver answers: the shipped
	// default floor, may.
	checkLookup(t, "socketmap:inet:"+ports[0]+":tlspolicy", lookup{"example.org", may, found}, "")
	checkLookup(t, "tcp:"+ports[1], lookup{"example.org", may, found}, "")
	state := filepath.Join(stateDir, "state.db")
	if fi, err := os.Stat(state); err != nil {
		t.Errorf("the daemon keeps no state in the unit's StateDirectory: %v", err)
	} else if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != svc.uid || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: owner %d, mode %v; want the service's user %d and 0600", state, st.Uid, fi.Mode().Perm(), svc.uid)
	}
	if err := daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	notify.next(t, stopTimeout, "STOPPING=1", exited)
	if code := waitExit(t, daemon, exited); code != 0 {
		t.Errorf("the installed daemon exited with %d after SIGTERM, want 0", code)
	}

	// Remove it: the changed conffile stays until purge.
	dpkg(t, "-r", "tlspolicyd")
	if _, err := os.Stat(debBinary); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after dpkg -r, %s: %v, want it gone", debBinary, err)
	}
	if b, err := os.ReadFile(debConfig); err != nil || !strings.Contains(string(b), ports[0]) {
		t.Errorf("after dpkg -r, the administrator's %s is gone or changed (%v)", debConfig, err)
	}
}

// installedVersion is the version of the installed tlspolicyd package, or
// "" if none is installed.
func installedVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}|${Version}", "tlspolicyd").Output()
	if err != nil { // not known to dpkg
		return ""
	}
	status, version, _ := strings.Cut(string(out), "|")
	if !strings.HasSuffix(status, " installed") && !strings.HasSuffix(status, " config-files") &&
		!strings.Contains(status, "half") && !strings.Contains(status, "unpacked") {
		return ""
	}
	return version
}

// keepStateDir moves a /var/lib/tlspolicyd that the package did not make
// (a daemon run by hand as root) out of the package's way, and puts it back
// when the test ends, after the purge.
func keepStateDir(t *testing.T) {
	t.Helper()
	const dir = "/var/lib/tlspolicyd"
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return
	}
	aside := fmt.Sprintf("%s.before-acceptance-%d", dir, os.Getpid())
	if err := os.Rename(dir, aside); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Rename(aside, dir); err != nil {
			t.Errorf("putting %s back: %v", dir, err)
		}
	})
}

// dpkg runs dpkg with args and returns its output; it waits for the dpkg
// lock (an apt run elsewhere on the machine) for a minute at most.
func dpkg(t *testing.T, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, "dpkg", args...).CombinedOutput()
		cancel()
		if err == nil {
			return string(out)
		}
		if strings.Contains(string(out), "lock") && time.Now().Before(deadline) {
			time.Sleep(time.Second)
			continue
		}
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// purgeAndCheck purges the package and checks that nothing of it is left.
func purgeAndCheck(t *testing.T) {
	t.Helper()
	if installedVersion(t) == "" {
		t.Errorf("tlspolicyd was not installed (nor its conffiles) when the test ended")
		return
	}
	dpkg(t, "--purge", "tlspolicyd")
	for _, p := range []string{debBinary, debUnit, debConfig, filepath.Dir(debConfig), debWantsIn,
		"/etc/systemd/system/tlspolicyd.service", "/var/lib/tlspolicyd", "/var/lib/private/tlspolicyd",
		"/usr/share/doc/tlspolicyd", "/var/lib/systemd/deb-systemd-helper-enabled/tlspolicyd.service.dsh-also",
		"/var/lib/systemd/deb-systemd-helper-masked/tlspolicyd.service"} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after dpkg --purge, %s is still there (%v)", p, err)
		}
	}
}

// mustRun runs a command that must succeed and returns its output, standard
// error included.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// stderrOf is the standard error captured in an *exec.ExitError.
func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// processesOf lists the processes running the executable path.
func processesOf(path string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == path {
			pids = append(pids, pid)
		}
	}
	return pids
}

// readUnit returns the [Service] settings of a unit file, each key's last
// value.
func readUnit(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			if k, v, ok := strings.Cut(line, "="); ok {
				settings[k] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if settings["Type"] != "notify" {
		t.Fatalf("%s: Type=%s; this test runs the daemon as for Type=notify", path, settings["Type"])
	}
	return settings
}

// commandLine splits the unit's command setting into arguments; it
// accepts only the plain form the shipped unit uses (no prefixes, quotes
// or variables).
func commandLine(t *testing.T, unit map[string]string, key string) []string {
	t.Helper()
	line := unit[key]
	if line == "" || strings.ContainsAny(line, "\"'$%\\") || strings.ContainsAny(line[:1], "-@:+!") {
		t.Fatalf("%s=%s: not a plain command line this test can run", key, line)
	}
	return strings.Fields(line)
}

// serviceAccount is who the unit's commands run as.
type serviceAccount struct{ uid, gid int }

// serviceUser returns the unit's User= and Group=, or for DynamicUser=yes
// an ID of systemd's dynamic range (61184-65519) that no user or group
// holds, as systemd would allocate.
func serviceUser(t *testing.T, unit map[string]string) serviceAccount {
	t.Helper()
	if unit["DynamicUser"] != "yes" {
		u, err := user.Lookup(unit["User"])
		if err != nil {
			t.Fatalf("the unit's User=%s: %v", unit["User"], err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return serviceAccount{uid, gid}
	}
	for id := 61184; id <= 65519; id++ {
		_, uerr := user.LookupId(strconv.Itoa(id))
		_, gerr := user.LookupGroupId(strconv.Itoa(id))
		if uerr != nil && gerr != nil {
			return serviceAccount{id, id}
		}
	}
	t.Fatal("no free ID in systemd's dynamic user range")
	return serviceAccount{}
}

// asService prepares argv to run as the service's account with the unit's
// umask and environment, as systemd would start it.
func asService(svc serviceAccount, umask string, env, argv []string) *exec.Cmd {
	if umask == "" {
		umask = "0022" // systemd's default
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", `umask "$1"; shift; exec "$@"`, "sh", umask}, argv...)...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(svc.uid), Gid: uint32(svc.gid)}}
	return cmd
}

// editConffile changes the installed configuration as an administrator
// would: the listeners move to ports (from freePorts), since other tests
// use the shipped ports (commands that ask a running daemon would find
// this one), and the resolver becomes ports[5], where nothing answers, so
// that the daemon never leaves the machine.
func editConffile(t *testing.T, ports []string) {
	t.Helper()
	b, err := os.ReadFile(debConfig)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for i, shipped := range []string{"127.0.0.1:10028", "127.0.0.1:10029", "127.0.0.1:10030", "127.0.0.1:10031", "127.0.0.1:10032"} {
		if strings.Count(text, shipped) == 0 {
			t.Fatalf("the shipped %s no longer has a listener at %s, which this test moves", debConfig, shipped)
		}
		text = strings.ReplaceAll(text, shipped, ports[i])
	}
	const resolver = "servers: []"
	if strings.Count(text, resolver) != 1 {
		t.Fatalf("the shipped %s no longer has %q, which this test replaces", debConfig, resolver)
	}
	text = strings.Replace(text, resolver, fmt.Sprintf("servers: [%q]", ports[5]), 1)
	if err := os.WriteFile(debConfig, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
