package acceptance

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// The Exim tests run Debian's Exim 4.96 binary, unpacked beside Postfix by
// .ci/install-exim, as root with a configuration of their own (exim -C) that
// .includes the shipped contrib/exim files: what the tests exercise is the
// text a postmaster pastes, with only the daemon's address and the test CA
// set by macros.

// eximPath is where .ci/install-exim puts the binary.
const eximPath = "/opt/tlspolicyd-exim/usr/sbin/exim4"

// eximUser is the user Debian's Exim was built to deliver as: its spool and
// log directories must belong to it.
const eximUser = "Debian-exim"

// eximLimit bounds one run of the exim binary (an SMTP session, a delivery).
const eximLimit = 60 * time.Second

// eximConfigTemplate is the test's Exim configuration; {{NAME}} are filled
// by newExim. It is a minimal site configuration with the four contrib files
// .included where their comments say: the site's ACL accepts everything
// after the tlspolicyd statements, and its only remote router is a
// manualroute to the fake MX hosts (in place of dnslookup), with the
// contrib transport.
const eximConfigTemplate = `# Exim configuration of an acceptance test.
exim_path = {{EXIM}}
spool_directory = {{DIR}}/spool
log_file_path = {{DIR}}/log/%slog
primary_hostname = mta.client.test
qualify_domain = client.test
domainlist local_domains = mta.client.test
never_users =
trusted_users = root
tls_advertise_hosts =
keep_environment =
acl_smtp_rcpt = acl_check_rcpt
# Tries every deferred address at every queue run.
delay_warning =
ignore_bounce_errors_after = 0s

# The daemon, and the test CA as the trust anchor for verify.
TLSPOLICYD_SOCKET = {{SOCKET}}
TLSPOLICYD_TIMEOUT = 10s
TLSPOLICYD_CA_CERTIFICATES = {{CAFILE}}
.include {{CONTRIB}}/main.conf

begin acl

acl_check_rcpt:
  # (the site's own deny statements would be here)
.include {{CONTRIB}}/acl_check_rcpt.conf
  accept

begin routers

{{ROUTERS}}

# In place of dnslookup: every remote domain goes to its fake MX.
fakemx:
  driver = manualroute
  domains = ! +local_domains
  transport = tlspolicyd_smtp
  route_list = {{ROUTES}}
  self = send

begin transports

.include {{CONTRIB}}/transports.conf

begin retry

*  *  F,1h,10m
`

// eximOptions describe one Exim instance.
type eximOptions struct {
	// Daemon is the host:port of the daemon's exim listener.
	Daemon string
	// CAFile is the PEM file Exim trusts for verified TLS ("system" if
	// empty).
	CAFile string
	// Routes maps each recipient domain to the ip:port of its fake MX.
	Routes map[string]string
	// WithoutRouters leaves contrib/exim/routers.conf out, as a
	// postmaster might by mistake: the transport alone must not send in
	// plaintext.
	WithoutRouters bool
}

// eximInstance is one Exim configuration with its own spool (so its own
// retry hints) and logs.
type eximInstance struct {
	dir    string // 0755, holds exim.conf, spool/, log/
	config string
}

// newExim writes an Exim configuration and its directories. Exim delivers
// to remote hosts as Debian-exim, which must reach its spool and the CA
// file, so the directory is searchable by everyone and the spool and log
// belong to Debian-exim. It is removed when the test ends.
func newExim(t *testing.T, opts eximOptions) *eximInstance {
	t.Helper()
	checkExim(t)
	u, err := user.Lookup(eximUser)
	if err != nil {
		t.Fatalf("user %s: %v (run .ci/install-exim)", eximUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	dir := eximSharedDir(t)
	for _, sub := range []string{"spool", "log"} {
		p := filepath.Join(dir, sub)
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	contrib, err := filepath.Abs(filepath.Join("..", "..", "contrib", "exim"))
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for domain, addr := range opts.Routes {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("route for %s: %v", domain, err)
		}
		// In a route_list host list a colon is doubled: host::port.
		routes = append(routes, domain+" "+host+"::"+port)
	}
	if len(routes) == 0 {
		routes = append(routes, "nowhere.invalid 127.0.0.1::1")
	}
	caFile := opts.CAFile
	if caFile == "" {
		caFile = "system"
	}
	routers := ".include " + contrib + "/routers.conf"
	if opts.WithoutRouters {
		routers = "# (contrib/exim/routers.conf left out)"
	}
	text := strings.NewReplacer(
		"{{ROUTERS}}", routers,
		"{{EXIM}}", eximPath,
		"{{DIR}}", dir,
		"{{SOCKET}}", "inet:"+opts.Daemon,
		"{{CAFILE}}", caFile,
		"{{CONTRIB}}", contrib,
		"{{ROUTES}}", strings.Join(routes, " ; "),
	).Replace(eximConfigTemplate)
	e := &eximInstance{dir: dir, config: filepath.Join(dir, "exim.conf")}
	// Exim refuses a configuration file that others may write.
	if err := os.WriteFile(e.config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("exim configuration %s:\n%s", e.config, text)
			t.Logf("exim mainlog:\n%s", e.log("mainlog"))
			if p := e.log("paniclog"); p != "" {
				t.Logf("exim paniclog:\n%s", p)
			}
		}
	})
	return e
}

// checkExim fails the test unless the Exim binary is there and the test
// runs as root (exim -C keeps its privilege only for root, and deliveries
// switch to Debian-exim).
func checkExim(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(eximPath); err != nil {
		t.Fatalf("Exim not found (%v): the Exim acceptance tests need Debian's exim4 binary; run .ci/install-exim", err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the Exim acceptance tests run exim -C as root (as .ci/run does)")
	}
}

// eximSharedDir makes a temporary directory that other users may search, and
// removes it when the test ends.
func eximSharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tlspolicyd-exim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run runs exim -C CONFIG args with stdin, bounded by eximLimit, and
// returns its output and exit code.
func (e *eximInstance) run(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eximLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, eximPath, append([]string{"-C", e.config}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("exim %q: not done within %v; stdout %q, stderr %q", args, eximLimit, so.String(), se.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running exim: %v", err)
	}
	return so.String(), se.String(), cmd.ProcessState.ExitCode()
}

// expand returns exim -be's expansion of s, without the newline exim adds
// after it.
func (e *eximInstance) expand(t *testing.T, s string) string {
	t.Helper()
	out, stderr, code := e.run(t, "", "-be", s)
	if code != 0 {
		t.Fatalf("exim -be %q: exit %d, stderr %q", s, code, stderr)
	}
	return strings.TrimSuffix(out, "\n")
}

// eximReply is one SMTP reply, its lines joined.
type eximReply struct {
	code int
	text string // the lines' texts joined with spaces
}

func (r eximReply) String() string { return fmt.Sprintf("%d %s", r.code, r.text) }

// testSession runs an SMTP session as if from host (exim -bh: the ACLs run
// and ask the daemon, nothing is received or delivered) and returns the
// greeting followed by one reply per command.
func (e *eximInstance) testSession(t *testing.T, host string, commands ...string) []eximReply {
	t.Helper()
	out, stderr, _ := e.run(t, strings.Join(commands, "\r\n")+"\r\n", "-bh", host)
	replies := eximParseReplies(out)
	if len(replies) != len(commands)+1 {
		t.Fatalf("exim -bh %s: %d replies to %d commands:\n%s\nstderr:\n%s", host, len(replies), len(commands), out, stderr)
	}
	for i, c := range commands {
		t.Logf("exim -bh: C: %s\n  S: %s", c, replies[i+1])
	}
	return replies
}

// smtpSession runs a real SMTP session on standard input (exim -bs, as a
// local process would): a message it accepts is received into the queue.
// It returns the greeting and the replies.
func (e *eximInstance) smtpSession(t *testing.T, commands ...string) []eximReply {
	t.Helper()
	out, stderr, _ := e.run(t, strings.Join(commands, "\r\n")+"\r\n", "-odq", "-bs")
	replies := eximParseReplies(out)
	if len(replies) == 0 {
		t.Fatalf("exim -bs: no reply:\n%s\nstderr:\n%s", out, stderr)
	}
	return replies
}

var eximReplyLine = regexp.MustCompile(`^(\d{3})([ -])(.*)$`)

// eximParseReplies reads the SMTP replies in exim's output, joining
// continuation lines; other lines (-bh's commentary) are skipped.
func eximParseReplies(out string) []eximReply {
	var replies []eximReply
	var cur *eximReply
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := eximReplyLine.FindStringSubmatch(strings.TrimRight(sc.Text(), "\r"))
		if m == nil {
			continue
		}
		code, _ := strconv.Atoi(m[1])
		if cur == nil {
			cur = &eximReply{code: code, text: m[3]}
		} else {
			cur.text += " " + m[3]
		}
		if m[2] == " " {
			replies = append(replies, *cur)
			cur = nil
		}
	}
	return replies
}

// submit hands Exim a message from sender to recipient on standard input
// (as sendmail does, bypassing the RCPT ACL) and has it delivered in the
// foreground (-odf) before exim returns. It returns the message's queue ID.
func (e *eximInstance) submit(t *testing.T, sender, recipient string) string {
	t.Helper()
	before := len(e.log("mainlog"))
	msg := fmt.Sprintf("From: <%s>\nTo: <%s>\nSubject: tlspolicyd test\n\nA test message.\n", sender, recipient)
	_, stderr, code := e.run(t, msg, "-odf", "-f", sender, recipient)
	if code != 0 {
		t.Fatalf("exim -odf -f %s %s: exit %d, stderr %q", sender, recipient, code, stderr)
	}
	// The arrival line: "DATE TIME ID <= sender ...".
	for _, line := range strings.Split(e.log("mainlog")[before:], "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[3] == "<=" {
			return f[2]
		}
	}
	t.Fatalf("exim -odf -f %s %s: no arrival in the mainlog:\n%s", sender, recipient, e.log("mainlog"))
	return ""
}

// deliver runs a delivery attempt of one queued message in the foreground,
// retry times ignored (exim -M ID).
func (e *eximInstance) deliver(t *testing.T, id string) {
	t.Helper()
	if _, stderr, code := e.run(t, "", "-M", id); code != 0 {
		t.Logf("exim -M %s: exit %d, stderr %q", id, code, stderr)
	}
}

// log returns an Exim log file ("mainlog", "paniclog", "rejectlog"), or ""
// if there is none.
func (e *eximInstance) log(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "log", name))
	return string(b)
}

// logLines returns the mainlog lines about message id.
func (e *eximInstance) logLines(id string) []string {
	var lines []string
	for _, line := range strings.Split(e.log("mainlog"), "\n") {
		if strings.Contains(line, " "+id+" ") {
			lines = append(lines, line)
		}
	}
	return lines
}

// queue returns exim -bp's listing of the queue.
func (e *eximInstance) queue(t *testing.T) string {
	t.Helper()
	out, stderr, code := e.run(t, "", "-bp")
	if code != 0 {
		t.Fatalf("exim -bp: exit %d, stderr %q", code, stderr)
	}
	return out
}

// eximWorld is the part of the internet an Exim test needs: a fake DNS
// server for the daemon's probes, a test CA, and fake MX hosts on one port,
// each on its own 127.0.0.x address and named mx.DOMAIN in the fake DNS.
type eximWorld struct {
	dns    *fakedns.Server
	ca     *testca.CA
	caFile string // world-readable: Exim's delivery process reads it as Debian-exim
	port   int
	mx     map[string]*fakemx.Server // by domain
	addr   map[string]string         // by domain: ip:port
}

// eximMX is one destination with one MX host.
type eximMX struct {
	domain string
	ip     string // 127.0.0.x, its own
	opts   fakemx.Options
}

// newEximWorld starts the fake DNS and mints the CA; startMX starts the
// fake MX hosts.
func newEximWorld(t *testing.T) *eximWorld {
	t.Helper()
	w := &eximWorld{
		dns:  fakedns.MustStart(t),
		ca:   testca.MustNew(t),
		mx:   map[string]*fakemx.Server{},
		addr: map[string]string{},
	}
	f, err := w.ca.WritePEM(eximSharedDir(t))
	if err != nil {
		t.Fatal(err)
	}
	w.caFile = f
	return w
}

// startMX starts one fake MX per destination, all on one port, and
// publishes them in the fake DNS (MX mx.DOMAIN, A ip). Call it once.
func (w *eximWorld) startMX(t *testing.T, hosts ...eximMX) {
	t.Helper()
	if w.port != 0 {
		t.Fatal("eximWorld.startMX called twice")
	}
	group := make([]fakemx.Host, len(hosts))
	for i, h := range hosts {
		opts := h.opts
		if opts.Logf == nil {
			prefix := fmt.Sprintf("fakemx %s (%s): ", h.domain, h.ip)
			opts.Logf = func(format string, args ...any) { t.Logf(prefix+format, args...) }
		}
		if opts.Timeout == 0 {
			opts.Timeout = 30 * time.Second
		}
		group[i] = fakemx.Host{IP: h.ip, Options: opts}
	}
	servers, err := fakemx.StartGroup(group...)
	if err != nil {
		t.Fatalf("starting the fake MX hosts: %v", err)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Close()
		}
	})
	_, port, _ := net.SplitHostPort(servers[0].Addr())
	w.port, _ = strconv.Atoi(port)
	for i, h := range hosts {
		w.dns.AddMX(h.domain, 10, "mx."+h.domain)
		w.dns.AddA("mx."+h.domain, h.ip)
		w.mx[h.domain] = servers[i]
		w.addr[h.domain] = servers[i].Addr()
	}
}

// verifiedTLS is a server TLS configuration with a certificate from the
// world's CA for mx.DOMAIN and for ip: Exim, routed to the address by the
// test's manualroute router, checks the certificate against the address.
func (w *eximWorld) verifiedTLS(t *testing.T, domain, ip string) *tls.Config {
	t.Helper()
	cert := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx." + domain}, IPs: []net.IP{net.ParseIP(ip)}})
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// daemonConfig is the daemon configuration of an Exim test: the exim and
// http listeners, the world's DNS, probes of the world's MX port, then
// rules (defaults, destinations, classes).
func (w *eximWorld) daemonConfig(rules string) string {
	return fmt.Sprintf(`listen:
  exim: @EXIM@
  http: @HTTP@
dns:
  servers: [%q]
  timeout: 2s
probe:
  port: %d
  helo: probe.test
  timeout: 5s
  wait: 1s
  ca_file: %q
  allow_private: true
state:
  path: @DIR@/state.db
mtasts:
  enabled: false
minimum_tls: TLSv1.2
`, w.dns.Addr(), w.port, w.caFile) + rules
}

// eximAsk sends one request line to the daemon's exim listener as
// ${readsocket} does (write, half-close, read to the close) and returns the
// answer without its newline.
func eximAsk(t *testing.T, addr, request string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte(request + "\n")); err != nil {
		t.Fatalf("write %q: %v", request, err)
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%q: reading the answer: %v (got %q)", request, err, b)
	}
	return strings.TrimSuffix(b, "\n")
}

// waitEximAnswer asks the daemon request until the answer starts with want,
// within timeout, and returns the answer.
func waitEximAnswer(t *testing.T, addr, request, want string, timeout time.Duration) string {
	t.Helper()
	var got string
	eventually(t, timeout, fmt.Sprintf("%q answered %q...", request, want), func() (bool, string) {
		got = eximAsk(t, addr, request)
		return strings.HasPrefix(got, want), got
	})
	return got
}

// eximDeadAddr returns a loopback address where nothing listens.
func eximDeadAddr(t *testing.T) string {
	t.Helper()
	return freePorts(t, 1)[0]
}

// eximFakeDaemon is a stand-in for the daemon's exim listener that answers
// each request line with answer(request): for answers the real daemon
// should not give, to check what Exim does with them. It returns its
// address; it stops when the test ends.
func eximFakeDaemon(t *testing.T, answer func(request string) string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(ioTimeout))
			if req, err := bufio.NewReader(c).ReadString('\n'); err == nil {
				fmt.Fprintf(c, "%s\n", answer(strings.TrimSuffix(req, "\n")))
			}
			c.Close()
		}
	}()
	return l.Addr().String()
}
