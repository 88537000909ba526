package acceptance

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// chrootRules are the rules of TestPostfixChrootUnixSocket: tls.test may be
// raised to verify by its probe, notls.test must be encrypted.
const chrootRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: tls.test
    upgrade: verify
  - match: notls.test
    level: encrypt
`

// chrootPolicyMaps is smtp_tls_policy_maps as contrib/postfix/main.cf
// option 2 writes it: the socket named relative to the queue directory,
// which is the root of a chrooted smtp(8) (and the working directory of an
// unchrooted one).
const chrootPolicyMaps = "socketmap:unix:private/tlspolicyd:tlspolicy"

// TestPostfixChrootUnixSocket checks the documented set-up for a chrooted
// Postfix smtp(8) (contrib/postfix/main.cf, option 2): the daemon listens on
// unix:<queue_directory>/private/tlspolicyd (mode 0666), main.cf names the
// socket socketmap:unix:private/tlspolicyd:tlspolicy, and master.cf runs
// the smtp unix service with chroot y.
//
// The chroot jail is prepared as Debian's configure-instance.sh does it
// for the files that matter here: etc/hosts (the chrooted smtp(8) resolves
// the recipient domains with smtp_host_lookup = native, inside the jail,
// not through the harness's bind-mounted /etc/hosts), etc/nsswitch.conf,
// etc/host.conf and etc/services. smtp_tls_CAfile stays outside the jail:
// smtp(8) loads it before it enters the chroot.
func TestPostfixChrootUnixSocket(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	const (
		tlsIP   = "127.0.0.31"
		notlsIP = "127.0.0.32"
	)
	w.startMX(t,
		mxHost{"tls.test", "mx.tls.test", tlsIP,
			fakemx.Options{Hostname: "mx.tls.test", TLS: w.verifiedTLS(t, "tls.test", "mx.tls.test")}},
		mxHost{"notls.test", "mx.notls.test", notlsIP, fakemx.Options{Hostname: "mx.notls.test"}},
	)
	// Postfix first: the socket lives in its queue directory, whose
	// private/ subdirectory postfix start creates. smtp(8) connects to the
	// socket only when it looks a destination up, after the daemon started.
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: chrootPolicyMaps,
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		Hosts:      map[string]string{"tls.test": tlsIP, "notls.test": notlsIP},
	})
	queue := filepath.Join(pf.dir, "queue")

	// The jail's etc/: the test's hosts file, and the system's name
	// service configuration.
	jailEtc := filepath.Join(queue, "etc")
	if err := os.MkdirAll(jailEtc, 0o755); err != nil {
		t.Fatal(err)
	}
	hosts, err := os.ReadFile(filepath.Join(pf.dir, "hosts"))
	if err != nil {
		t.Fatal(err)
	}
	writeShared(t, jailEtc, "hosts", string(hosts))
	for _, name := range []string{"nsswitch.conf", "host.conf", "services"} {
		b, err := os.ReadFile(filepath.Join("/etc", name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		writeShared(t, jailEtc, name, string(b))
	}

	// Chroot on for the smtp unix service only (the harness turned every
	// service's off), as Debian's stock master.cf has it; the master
	// starts new smtp processes chrooted after a reload.
	pf.postconf(t, "-F", "smtp/unix/chroot = y")
	if out, err := pf.run(t, postfixStartLimit, postfixCmd(t, "postfix"), "-c", pf.conf, "reload"); err != nil {
		t.Fatalf("postfix reload: %v\n%s", err, out)
	}
	if out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postconf"), "-c", pf.conf, "-F", "smtp/unix/chroot"); err != nil ||
		strings.TrimSpace(out) != "smtp/unix/chroot = y" {
		t.Fatalf("postconf -F smtp/unix/chroot: %v: %q, want smtp/unix/chroot = y", err, out)
	}
	if out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postconf"), "-c", pf.conf, "-h", "queue_directory"); err != nil ||
		strings.TrimSpace(out) != queue {
		t.Fatalf("postconf -h queue_directory: %v: %q, want %s", err, out, queue)
	}

	socket := filepath.Join(queue, "private", "tlspolicyd")
	d := startDaemon(t, strings.Replace(w.probeConfig(t, chrootRules),
		"socketmap: "+phSocketmap, "socketmap: unix:"+socket, 1))
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Errorf("%s: mode %v, want a socket with mode 0666", socket, fi.Mode())
	}
	// postmap runs unchrooted: the absolute path of the same socket.
	table := d.socketmap(t, "tlspolicy")
	sender := "sender@" + pf.hostname

	t.Run("verify delivers over verified TLS", func(t *testing.T) {
		t.Parallel()
		waitAnswer(t, table, "tls.test", verify, []string{may}, probeSettle)
		const rcpt = "user@tls.test"
		pf.send(t, sender, rcpt, "verify")
		status := pf.delivery(t, rcpt)
		if !strings.Contains(status, "status=sent") {
			t.Fatalf("mail to %s was not sent: %s", rcpt, status)
		}
		msgs, err := w.server(t, "mx.tls.test").WaitMessages(waitCtx(t, deliveryLimit), 1)
		if err != nil {
			t.Fatalf("the fake MX of tls.test received no message: %v", err)
		}
		m := msgs[0]
		if !m.TLS || m.TLSVersion < tls.VersionTLS12 || !strings.Contains(string(m.Data), "Subject: verify") {
			t.Errorf("message at mx.tls.test: TLS %v, version %s, to %q; want TLS 1.2 or later, the message with subject verify",
				m.TLS, tls.VersionName(m.TLSVersion), m.To)
		}
		// Verified only at the verify and secure levels: the chrooted
		// smtp(8) got verify from the daemon over the unix socket.
		if line, ok := findLine(pf.log(), "Verified TLS connection established to tls.test["); ok {
			t.Logf("maillog: %s", line)
		} else {
			line, _ := findLine(pf.log(), "TLS connection established to tls.test[")
			t.Errorf("the maillog has no Verified TLS connection to tls.test; TLS line: %q", line)
		}
		checkSMTPChrooted(t, pf, queue)
	})

	t.Run("encrypt floor without STARTTLS defers", func(t *testing.T) {
		t.Parallel()
		const rcpt = "user@notls.test"
		pf.send(t, sender, rcpt, "encrypt")
		status := pf.delivery(t, rcpt)
		var missing []string
		for _, want := range []string{"status=deferred", "dsn=4.7.4", "TLS is required, but was not offered"} {
			if !strings.Contains(status, want) {
				missing = append(missing, want)
			}
		}
		if missing != nil {
			t.Errorf("delivery to %s: the status line lacks %q:\n%s", rcpt, missing, status)
		}
		s := w.server(t, "mx.notls.test")
		if _, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections); err != nil {
			t.Fatalf("sessions at mx.notls.test did not end: %v", err)
		}
		if n := s.Stats().Messages; n != 0 {
			t.Errorf("mx.notls.test accepted %d messages, want none", n)
		}
		if q := pf.queue(t); !strings.Contains(q, rcpt) {
			t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
		}
		checkSMTPChrooted(t, pf, queue)
	})
}

// checkSMTPChrooted checks that the instance's master has smtp children
// (they linger after a delivery, up to max_idle) and that every one runs
// with the queue directory as its root (/proc/PID/root).
func checkSMTPChrooted(t *testing.T, pf *postfixInstance, queue string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(queue, "pid", "master.pid"))
	if err != nil {
		t.Fatalf("the master's pid file: %v", err)
	}
	master := strings.TrimSpace(string(b))
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var smtp int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.HasSuffix(s[:i], "(smtp") {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 2 || fields[1] != master {
			continue
		}
		smtp++
		root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root"))
		if err != nil {
			continue // it exited meanwhile
		}
		if root != queue {
			t.Errorf("smtp process %d runs with root %q, want the queue directory %s (chroot)", pid, root, queue)
		} else {
			t.Logf("smtp process %d runs chrooted in %s", pid, root)
		}
	}
	if smtp == 0 {
		t.Errorf("the master (pid %s) has no smtp process to check for its chroot", master)
	}
}
