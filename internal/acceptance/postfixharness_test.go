package acceptance

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A private Postfix instance for tests that need the real Postfix smtp
// client to deliver through the daemon's policy answers.
//
// Each instance lives in a world-readable temporary directory of its own:
// conf/ (main.cf, master.cf), queue/, data/ (owned by the postfix user, as
// the master's lock file needs), the maillog (Postfix's postlogd writes it;
// there is no syslog), a hosts file and, if the instance resolves in DNS, a
// resolv.conf. Nothing of the system's Postfix is used besides the
// binaries and the stock master.cf, and no port is bound: the smtpd
// service is removed from master.cf, and mail is injected with sendmail
// -C, which only writes the maildrop queue.
//
// Name resolution comes in two kinds. By default (smtp_dns_support_level =
// disabled, smtp_host_lookup = native) the smtp client resolves a recipient
// domain as a host name through the C library, that is /etc/hosts, and
// connects to it: no MX records. With postfixOptions.DNS
// (smtp_dns_support_level = enabled, smtp_host_lookup = dns) it looks up
// MX records and their hosts' addresses in DNS, as in production, asking
// the test's fake DNS server through the C library's stub resolver, that
// is /etc/resolv.conf. The instance is started with unshare -m, in a
// private mount namespace where its hosts file is bind-mounted over
// /etc/hosts and, with DNS, its resolv.conf over /etc/resolv.conf; the
// master daemonizes and its children (smtp included) inherit the
// namespace, while the rest of the machine keeps its own files. sendmail,
// postqueue and postfix stop need no names and run outside the namespace.
// This needs root (the tests run as root).

// Bounds of the Postfix tests' waits.
const (
	postfixStartLimit = 30 * time.Second // postfix start (it waits for the master)
	postfixStopLimit  = 30 * time.Second // postfix stop (it waits up to 5 s, then kills)
	deliveryLimit     = 30 * time.Second // from sendmail until the maillog shows the outcome
)

// postfixOptions are what a test chooses of an instance's main.cf.
type postfixOptions struct {
	// PolicyMaps is smtp_tls_policy_maps, such as
	// socketmap:inet:127.0.0.1:PORT:tlspolicy.
	PolicyMaps string
	// CAFile is smtp_tls_CAfile; it must be readable by the postfix user.
	CAFile string
	// SMTPPort is smtp_tcp_port, the port of every fake MX host.
	SMTPPort int
	// Hosts maps names to addresses in the instance's /etc/hosts.
	Hosts map[string]string
	// DNS, if set, is the address of the DNS server the smtp client asks,
	// "IPv4:53" (the C library's resolver asks port 53 only), such as a
	// fake DNS server from newWorldDNS: MX and address lookups go there
	// (smtp_dns_support_level = enabled, smtp_host_lookup = dns), and
	// Hosts no longer applies to next hops. The resolv.conf names it alone
	// (see resolvConfText). For DANE, set smtp_dns_support_level = dnssec
	// in MainCF.
	DNS string

	// SMTPD, if set, keeps an smtpd(8) listener, on a free 127.0.0.1 port
	// (postfixInstance.smtpd), so that tests can talk SMTP to the
	// instance (swaks); otherwise no port is bound.
	SMTPD bool
	// MainCF holds further main.cf settings in main.cf syntax (comments
	// and continuation lines allowed), such as the lines of
	// contrib/postfix/main.cf. They are applied with postconf -e after the
	// instance's own settings and replace them where they name the same
	// parameter.
	MainCF string
	// MasterCF is appended to master.cf, such as the class transports of
	// contrib/postfix/master-classes.cf. Chroot is turned off for it too.
	MasterCF string
}

// postfixInstance is one running Postfix.
type postfixInstance struct {
	dir      string // the instance's directory
	conf     string // config_directory
	maillog  string
	hostname string // myhostname, which the smtp client says in EHLO
	smtpd    string // 127.0.0.1:PORT of the smtpd listener, if opts.SMTPD
}

// postfixMainCF is the instance's main.cf. The queue settings retry
// deferred mail soon, so that a test sees a second attempt if there is one.
const postfixMainCF = `compatibility_level = 3.6
queue_directory = {{DIR}}/queue
data_directory = {{DIR}}/data
maillog_file = {{DIR}}/maillog
maillog_file_prefixes = /tmp, /var, /dev/stdout, {{DIR}}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {{HOSTNAME}}
mydomain = postfix.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
biff = no
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_dns_support_level = {{DNSLEVEL}}
smtp_host_lookup = {{HOSTLOOKUP}}
smtp_tcp_port = {{PORT}}
smtp_tls_security_level = may
smtp_tls_policy_maps = {{POLICY}}
smtp_tls_CAfile = {{CAFILE}}
smtp_tls_loglevel = 1
`

// startPostfix configures and starts a Postfix instance, and stops it when
// the test ends; if the test failed, the maillog is shown.
func startPostfix(t *testing.T, opts postfixOptions) *postfixInstance {
	t.Helper()
	dir := sharedTempDir(t)
	// MkdirTemp's suffix is digits: a name of its own for every instance,
	// and never the fake MX's name (Postfix refuses a server that greets
	// it with its own name).
	suffix := filepath.Base(dir)[strings.LastIndex(filepath.Base(dir), "-")+1:]
	pf := &postfixInstance{
		dir:      dir,
		conf:     filepath.Join(dir, "conf"),
		maillog:  filepath.Join(dir, "maillog"),
		hostname: "client-" + suffix + ".postfix.test",
	}
	for _, d := range []string{"conf", "queue", "data"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pfUser, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("the postfix user: %v (is Postfix installed? run .ci/install-deps)", err)
	}
	uid, _ := strconv.Atoi(pfUser.Uid)
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		t.Fatal(err)
	}

	dnsLevel, hostLookup := "disabled", "native"
	if opts.DNS != "" {
		dnsLevel, hostLookup = "enabled", "dns"
	}
	mainCF := strings.NewReplacer(
		"{{DNSLEVEL}}", dnsLevel,
		"{{HOSTLOOKUP}}", hostLookup,
		"{{DIR}}", dir,
		"{{HOSTNAME}}", pf.hostname,
		"{{PORT}}", strconv.Itoa(opts.SMTPPort),
		"{{POLICY}}", opts.PolicyMaps,
		"{{CAFILE}}", opts.CAFile,
	).Replace(postfixMainCF)
	writeShared(t, pf.conf, "main.cf", mainCF)
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatalf("the stock master.cf: %v", err)
	}
	writeShared(t, pf.conf, "master.cf", string(master)+"\n"+opts.MasterCF)
	if settings := mainCFSettings(opts.MainCF); len(settings) > 0 {
		pf.postconf(t, append([]string{"-e"}, settings...)...)
	}
	// No chroot (the instance's files are not in a chroot jail), and no
	// smtpd on port 25: mail comes in through sendmail, or through an
	// smtpd on a port of its own.
	pf.postconf(t, "-F", "*/*/chroot = n")
	pf.postconf(t, "-MX", "smtp/inet")
	if opts.SMTPD {
		pf.smtpd = freePorts(t, 1)[0]
		pf.postconf(t, "-M", pf.smtpd+"/inet = "+pf.smtpd+" inet n - n - - smtpd")
	}

	var hosts strings.Builder
	fmt.Fprintf(&hosts, "127.0.0.1\tlocalhost %s\n", pf.hostname)
	names := make([]string, 0, len(opts.Hosts))
	for name := range opts.Hosts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&hosts, "%s\t%s\n", opts.Hosts[name], name)
	}
	hostsFile := writeShared(t, dir, "hosts", hosts.String())
	resolvConf := "" // none: the namespace keeps the system's
	if opts.DNS != "" {
		resolvConf = writeShared(t, dir, "resolv.conf", resolvConfText(t, opts.DNS))
	}

	// postfix start prints its errors only to a terminal: on failure, the
	// maillog says why.
	out, err := pf.run(t, postfixStartLimit, postfixCmd(t, "unshare"), "-m", "sh", "-c",
		`mount --bind "$1" /etc/hosts &&
		{ [ -z "$4" ] || mount --bind "$4" /etc/resolv.conf; } &&
		exec "$2" -c "$3" start`,
		"sh", hostsFile, postfixCmd(t, "postfix"), pf.conf, resolvConf)
	if err != nil {
		t.Fatalf("starting Postfix: %v\n%s\nmaillog:\n%s", err, out, pf.log())
	}
	t.Cleanup(func() {
		if out, err := pf.run(t, postfixStopLimit, postfixCmd(t, "postfix"), "-c", pf.conf, "stop"); err != nil {
			t.Errorf("postfix stop: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("Postfix maillog (%s):\n%s", pf.maillog, pf.log())
		}
	})
	return pf
}

// resolvConfText is a resolv.conf for the DNS server at addr ("IPv4:53"),
// written as for a DANE host whose resolver validates: trust-ad tells the
// C library (glibc 2.31 and later) to keep the AD bit of its answers
// rather than clear it. Postfix 3.7 does not depend on the line (it sets
// RES_TRUSTAD itself when it asks for DNSSEC; TestPostfixDANE passes
// without it); other programs in the namespace would need it. No search
// list: the tests' names are fully qualified.
func resolvConfText(t *testing.T, addr string) string {
	t.Helper()
	ip, port, err := net.SplitHostPort(addr)
	if err != nil || port != "53" || net.ParseIP(ip).To4() == nil {
		t.Fatalf("postfixOptions.DNS %q: want IPv4:53, as resolv.conf has no port (%v)", addr, err)
	}
	return "nameserver " + ip + "\noptions trust-ad\n"
}

// mainCFSettings turns main.cf text into "name = value" arguments for
// postconf -e: comments and empty lines are dropped, and continuation lines
// (starting with white space) are joined to their parameter.
func mainCFSettings(text string) []string {
	var settings []string
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if n := len(settings); n > 0 {
				settings[n-1] += " " + trimmed
			}
		default:
			settings = append(settings, trimmed)
		}
	}
	return settings
}

// postconf runs postconf -c on the instance's configuration with args.
func (pf *postfixInstance) postconf(t *testing.T, args ...string) {
	t.Helper()
	args = append([]string{"-c", pf.conf}, args...)
	if out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postconf"), args...); err != nil {
		t.Fatalf("postconf %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// run runs a command, bounded by limit, and returns its output.
func (pf *postfixInstance) run(t *testing.T, limit time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s did not finish within %v", name, limit)
	}
	return string(out), err
}

// send submits a message from sender to rcpt with sendmail -C, which drops
// it into the instance's maildrop; the pickup service takes it from there.
// The subject names the message, so that the fake MX's copy can be told
// apart.
func (pf *postfixInstance) send(t *testing.T, sender, rcpt, subject string) {
	t.Helper()
	msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nA test message for %s.\r\n",
		sender, rcpt, subject, rcpt)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postfixCmd(t, "sendmail"), "-C", pf.conf, "-f", sender, "-i", "--", rcpt)
	cmd.Stdin = strings.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sendmail to %s: %v\n%s", rcpt, err, out)
	}
}

// delivery waits until the maillog has a delivery status line for rcpt
// (status=sent, deferred, bounced ...) and returns the first one.
func (pf *postfixInstance) delivery(t *testing.T, rcpt string) string {
	t.Helper()
	return pf.waitLog(t, deliveryLimit, "delivery status of "+rcpt, "to=<"+rcpt+">", " status=")
}

// waitLog polls the maillog until a line holds every one of parts and
// returns it; it fails the test (what says what was awaited) if none does
// within limit.
func (pf *postfixInstance) waitLog(t *testing.T, limit time.Duration, what string, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if line, ok := findLine(pf.log(), parts...); ok {
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no maillog line with %q within %v", what, parts, limit)
		}
		time.Sleep(lookupStep)
	}
}

// findLine returns the first line of text that holds every one of parts.
func findLine(text string, parts ...string) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
next:
	for sc.Scan() {
		for _, p := range parts {
			if !strings.Contains(sc.Text(), p) {
				continue next
			}
		}
		return sc.Text(), true
	}
	return "", false
}

// log returns the maillog so far ("" if there is none yet).
func (pf *postfixInstance) log() string {
	b, _ := os.ReadFile(pf.maillog)
	return string(bytes.TrimRight(b, "\n"))
}

// queue returns what postqueue -p lists.
func (pf *postfixInstance) queue(t *testing.T) string {
	t.Helper()
	out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postqueue"), "-c", pf.conf, "-p")
	if err != nil {
		t.Fatalf("postqueue -p: %v\n%s", err, out)
	}
	return out
}

// postfixCmd finds a Postfix (or system) command on PATH or in /usr/sbin,
// which is often not on PATH.
func postfixCmd(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found on PATH or in /usr/sbin: the Postfix tests need Postfix and util-linux; run .ci/install-deps", name)
	return ""
}
