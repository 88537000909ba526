package acceptance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// socketmapLabel selects the socketmap listener's series of a metric.
var socketmapLabel = map[string]string{"protocol": "socketmap"}

// TestIdleFloodDoesNotLockOut opens 150 idle connections against
// listen.max_connections: 100, then has 20 new clients look up one key
// each. A full listener admits each newcomer by closing the longest-idle
// connection, so every client is answered, correctly, within a second (the
// requirement: Postfix must not wait on a flood), and the flood loses its
// oldest connections, in order.
func TestIdleFloodDoesNotLockOut(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenInet+"  max_connections: 100\n"+hermetic+rules)
	const flood, clients = 150, 20

	floodConns := make([]net.Conn, flood)
	for i := range floodConns {
		floodConns[i] = d.dial(t, "socketmap")
	}
	eventually(t, pollTimeout, "the flood is accepted", func() (bool, string) {
		evicted := d.metric(t, "tlspolicyd_connections_evicted_total", socketmapLabel)
		open := d.metric(t, "tlspolicyd_connections_open", socketmapLabel)
		return evicted == flood-100 && open == 100, fmt.Sprintf("%v evicted, %v open", evicted, open)
	})

	answers := []struct{ key, want string }{
		{"example.org", "OK " + verify},
		{"mx.example.org", "OK " + encrypt},
		{"unmatched.test", "OK " + may},
	}
	for i := range clients {
		a := answers[i%len(answers)]
		start := time.Now()
		c := d.dial(t, "socketmap")
		c.SetDeadline(start.Add(time.Second))
		_, err := io.WriteString(c, netstring("tlspolicy "+a.key))
		var got string
		if err == nil {
			got, err = readNetstring(bufio.NewReader(c), maxNetstring)
		}
		if err != nil || got != a.want {
			t.Errorf("new client %d: tlspolicy %s -> %q, %v after %v; want %q within 1s",
				i+1, a.key, got, err, time.Since(start).Round(time.Millisecond), a.want)
		}
	}

	if got := d.metric(t, "tlspolicyd_connections_evicted_total", socketmapLabel); got != flood-100+clients {
		t.Errorf("tlspolicyd_connections_evicted_total = %v, want %d", got, flood-100+clients)
	}
	if got := d.metric(t, "tlspolicyd_connections_rejected_total", socketmapLabel); got != 0 {
		t.Errorf("tlspolicyd_connections_rejected_total = %v, want 0", got)
	}
	// The oldest 70 flood connections were closed, the newest 80 serve.
	closed := flood - 100 + clients
	for i, c := range floodConns {
		rc := &rawConn{t: t, name: fmt.Sprintf("flood connection %d", i+1), c: c, r: bufio.NewReader(c)}
		if i < closed {
			rc.expectClosed()
		} else {
			rc.ask("tlspolicy", "example.org", "OK "+verify)
		}
	}

	log, _ := os.ReadFile(d.logPath)
	line, ok := findLine(string(log), "closed an idle connection to admit a new one")
	if !ok {
		t.Fatalf("no eviction logged")
	}
	for _, attr := range []string{"protocol", "remote", "client", "idle", "new_remote", "max_connections"} {
		if n := strings.Count(line, " "+attr+"="); n != 1 {
			t.Errorf("attribute %s appears %d times in %q, want once", attr, n, line)
		}
	}
}

// TestIdleTimeout: with listen.idle_timeout: 1s, a connection that sends
// nothing is closed a second after accept, and one that sends requests a
// second after its last, however long it has been open.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenInet+"  idle_timeout: 1s\n"+hermetic+rules)

	silent := newRawConn(t, d, "socketmap", "silent connection")
	accepted := time.Now()
	busy := newRawConn(t, d, "socketmap", "connection with requests")
	for i := range 4 { // 1.2 s in all, no gap near 1 s
		if i > 0 {
			time.Sleep(400 * time.Millisecond)
		}
		busy.ask("tlspolicy", "example.org", "OK "+verify)
	}
	last := time.Now()

	silent.expectClosed()
	if d := time.Since(accepted); d < 900*time.Millisecond {
		t.Errorf("the silent connection was closed %v after accept, want no sooner than idle_timeout (1s)", d)
	}
	busy.expectClosed()
	if d := time.Since(last); d < 900*time.Millisecond {
		t.Errorf("the connection was closed %v after its last request, want no sooner than idle_timeout (1s)", d)
	}
	eventually(t, pollTimeout, "no connection open", func() (bool, string) {
		open := d.metric(t, "tlspolicyd_connections_open", socketmapLabel)
		return open == 0, fmt.Sprintf("%v open", open)
	})
}

// TestTrickleHitsRequestDeadline sends a lookup one byte a second. The
// request deadline (max(10s, probe.wait + 5s) = 10 s here) counts from the
// first byte, so the connection is closed 10 s in, long before the 25
// bytes are all sent, and the trickle gets no answer.
func TestTrickleHitsRequestDeadline(t *testing.T) {
	t.Parallel()
	const deadline = 10 * time.Second
	d := startDaemon(t, listenInet+hermetic+rules)
	c := d.dial(t, "socketmap")
	req := netstring("tlspolicy example.org")

	type end struct {
		read []byte
		err  error
	}
	ended := make(chan end, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		b, err := io.ReadAll(c) // until the daemon closes
		ended <- end{b, err}
	}()
	first := time.Now()
	var e end
	closed := false
	sent := 0
	for sent < len(req) && !closed {
		c.SetWriteDeadline(time.Now().Add(ioTimeout))
		if _, err := io.WriteString(c, req[sent:sent+1]); err != nil {
			break // the daemon's close reached the write first
		}
		sent++
		select {
		case e = <-ended:
			closed = true
		case <-time.After(time.Second):
		}
	}
	if !closed {
		select {
		case e = <-ended:
		case <-time.After(ioTimeout):
			t.Fatalf("the connection is still open after the whole request was sent over %v", time.Since(first).Round(time.Second))
		}
	}
	took := time.Since(first)
	switch {
	case len(e.read) > 0:
		t.Errorf("the trickled request was answered %q", e.read)
	case e.err != nil && !errors.Is(e.err, syscall.ECONNRESET):
		t.Errorf("reading: %v, want the connection closed", e.err)
	}
	if sent == len(req) {
		t.Errorf("all %d bytes were sent before the connection closed (%v after the first)", len(req), took.Round(time.Millisecond))
	}
	// The deadline holds from the first byte: not sooner (a slow request
	// is not cut early) and not much later (the trickle does not move it).
	if took < deadline-500*time.Millisecond || took > deadline+3*time.Second {
		t.Errorf("closed %v after the first byte, want at the request deadline (%v)", took.Round(time.Millisecond), deadline)
	}
	log, _ := os.ReadFile(d.logPath)
	if _, ok := findLine(string(log), "request timed out; closing connection", "request_timeout=10s"); !ok {
		t.Errorf("the request timeout is not logged")
	}
}

// TestPostmapReconnectsAfterIdleClose shows what Postfix's socketmap client
// (dict_sockmap, the code of smtp(8) and postmap) does when the daemon has
// closed its connection for idleness: postmap -q - keeps one connection for
// the keys it reads on standard input; the daemon closes it after
// idle_timeout; the next key is answered on a new connection, with no
// warning and no lookup error. (dict_sockmap retries a request once on a
// connection that turns out closed.)
func TestPostmapReconnectsAfterIdleClose(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenInet+"  idle_timeout: 1s\n"+hermetic+"log:\n  level: debug\n"+rules)
	out, stderr := postmapAcrossIdleClose(t, d, "socketmap", d.socketmap(t, "tlspolicy"))
	if want := "example.org\t" + verify + "\nmx.example.org\t" + encrypt + "\n"; out != want {
		t.Errorf("postmap printed %q, want %q", out, want)
	}
	if stderr != "" {
		t.Errorf("postmap warned: %s", stderr)
	}
	checkReconnected(t, d, "example.org", "mx.example.org")
}

// TestPostmapTCPTableAfterIdleClose records what the same costs a tcp_table
// client (dict_tcp), which has no such retry: the next lookup reads end of
// file, warns "unexpected EOF", sleeps a second and reconnects. The answer
// still comes (dict_tcp tries up to 10 times), but every idle close costs
// a warning and a second: hence the README's advice of socketmap, or an
// idle_timeout above Postfix's max_idle for tcp_table.
func TestPostmapTCPTableAfterIdleClose(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenInet+"  idle_timeout: 1s\n"+hermetic+"log:\n  level: debug\n"+rules)
	out, stderr := postmapAcrossIdleClose(t, d, "tcptable", d.tcpTable(t))
	if want := "example.org\t" + verify + "\nmx.example.org\t" + encrypt + "\n"; out != want {
		t.Errorf("postmap printed %q, want %q", out, want)
	}
	if !strings.Contains(stderr, "read TCP map reply from "+d.listen["tcptable"]+": unexpected EOF") {
		t.Errorf("postmap's stderr %q lacks the unexpected EOF warning (has dict_tcp changed? update README and docs/interface.md)", stderr)
	}
	checkReconnected(t, d, "example.org", "mx.example.org")
}

// postmapAcrossIdleClose runs postmap -q - on table (served by the daemon's
// listener), gives it example.org, waits until the daemon has answered it
// and closed the idle connection, gives it mx.example.org, and returns what
// postmap printed on its standard output and error.
func postmapAcrossIdleClose(t *testing.T, d *daemon, listener, table string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), postmapLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, postmapBin, "-c", postfixConf, "-q", "-", table)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ok := map[string]string{"protocol": listener, "result": "ok"}
	io.WriteString(stdin, "example.org\n")
	eventually(t, pollTimeout, "postmap's first lookup", func() (bool, string) {
		n := d.metric(t, "tlspolicyd_requests_total", ok)
		return n == 1, fmt.Sprintf("%v lookups", n)
	})
	eventually(t, pollTimeout, "the daemon closes postmap's idle connection", func() (bool, string) {
		open := d.metric(t, "tlspolicyd_connections_open", map[string]string{"protocol": listener})
		return open == 0, fmt.Sprintf("%v open", open)
	})
	io.WriteString(stdin, "mx.example.org\n")
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("postmap -q - %s: %v; stderr: %s", table, err, stderr.String())
	}
	if n := d.metric(t, "tlspolicyd_requests_total", ok); n != 2 {
		t.Errorf("%v lookups answered, want 2", n)
	}
	return stdout.String(), stderr.String()
}

// checkReconnected checks in the daemon's debug log that the lookup of
// second came on another connection than that of first, and that the
// daemon closed the first for idleness.
func checkReconnected(t *testing.T, d *daemon, first, second string) {
	t.Helper()
	log, _ := os.ReadFile(d.logPath)
	line1, _ := findLine(string(log), "msg=lookup", "key="+first+" ")
	line2, _ := findLine(string(log), "msg=lookup", "key="+second+" ")
	if remote(line1) == "" || remote(line2) == "" || remote(line1) == remote(line2) {
		t.Errorf("the second lookup did not come on a new connection:\n%s\n%s", line1, line2)
	}
	if _, ok := findLine(string(log), "closing idle connection", remote(line1)+" "); !ok {
		t.Errorf("the daemon did not log closing the idle connection (%s)", remote(line1))
	}
}

var remoteRE = regexp.MustCompile(` remote=(\S+)`)

// remote returns the remote= attribute of a log line, "" if none.
func remote(line string) string {
	if m := remoteRE.FindStringSubmatch(line); m != nil {
		return "remote=" + m[1]
	}
	return ""
}

// TestPostfixSMTPReconnectsAfterIdleClose has the real smtp(8) deliver two
// messages with one process (default_process_limit = 1), the daemon
// closing its socketmap connection for idleness in between: the second
// delivery looks its destination up on a new connection, with no warning
// in the maillog, and is sent.
func TestPostfixSMTPReconnectsAfterIdleClose(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	const ip1, ip2 = "127.0.0.111", "127.0.0.112"
	w.startMX(t,
		mxHost{"idle1.test", "mx.idle1.test", ip1, fakemx.Options{Hostname: "mx.idle1.test"}},
		mxHost{"idle2.test", "mx.idle2.test", ip2, fakemx.Options{Hostname: "mx.idle2.test"}},
	)
	config := strings.Replace(w.probeConfig(t, "log:\n  level: debug\ndefaults:\n  level: may\n  upgrade: none\n"),
		"  http: @HTTP@\n", "  http: @HTTP@\n  idle_timeout: 1s\n", 1)
	d := startDaemon(t, config)
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: d.socketmap(t, "tlspolicy"),
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		Hosts:      map[string]string{"idle1.test": ip1, "idle2.test": ip2},
		MainCF:     "default_process_limit = 1",
	})
	sender := "sender@" + pf.hostname

	pf.send(t, sender, "user@idle1.test", "first")
	status1 := pf.delivery(t, "user@idle1.test")
	if !strings.Contains(status1, "status=sent") {
		t.Fatalf("the first message was not sent: %s", status1)
	}
	eventually(t, pollTimeout, "the daemon closes smtp's idle connection", func() (bool, string) {
		open := d.metric(t, "tlspolicyd_connections_open", socketmapLabel)
		return open == 0, fmt.Sprintf("%v open", open)
	})
	pf.send(t, sender, "user@idle2.test", "second")
	status2 := pf.delivery(t, "user@idle2.test")
	if !strings.Contains(status2, "status=sent") {
		t.Fatalf("the second message was not sent: %s", status2)
	}

	if p1, p2 := smtpPID(status1), smtpPID(status2); p1 == "" || p1 != p2 {
		t.Errorf("the messages went through smtp processes %q and %q, want one process", p1, p2)
	}
	if line, ok := findLine(pf.log(), "warning"); ok {
		t.Errorf("the maillog has a warning: %s", line)
	}
	checkReconnected(t, d, "idle1.test", "idle2.test")
}

var smtpPIDRE = regexp.MustCompile(`postfix/smtp\[(\d+)\]`)

// smtpPID returns the process id of the smtp process that logged line.
func smtpPID(line string) string {
	if m := smtpPIDRE.FindStringSubmatch(line); m != nil {
		return m[1]
	}
	return ""
}
