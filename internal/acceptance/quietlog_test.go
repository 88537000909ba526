package acceptance

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
)

// listenAll starts every wire listener, so that bad input can be sent to
// each codec.
const listenAll = `listen:
  socketmap: @SOCKETMAP@
  tcptable: @TCPTABLE@
  policy: @POLICY@
  exim: @EXIM@
  http: @HTTP@
`

// summaryMessage is the message of the record that counts what the
// daemon's log rate limit held back (internal/ratelog).
const summaryMessage = "suppressed repeated log records"

// TestLogFlood: a flood of malformed requests on every wire listener
// leaves the daemon's log short. Each kind of warning is written a few
// times, then a summary record counts the rest, so that every bad request
// is accounted for: written, or counted in a summary (the ones still
// pending when the daemon stops are written as it exits). The daemon's
// JSON lists are empty lists, not null, while it knows nothing.
func TestLogFlood(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenAll+hermetic+"log:\n  format: json\n"+rules)

	for path, want := range map[string]string{
		"/admin/pins":          "[]",
		"/api/v1/destinations": `{"destinations":[]}`,
	} {
		if got := strings.TrimSpace(d.get(t, path, nil)); got != want {
			t.Errorf("GET %s with nothing known: %s, want %s", path, got, want)
		}
	}

	// One malformed request per connection: each codec closes the
	// connection after bad input.
	floods := []struct {
		listener, request, warning string
	}{
		{"socketmap", "abc:xyz,", "bad socketmap request; closing connection"},
		{"tcptable", "hello\n", "bad tcp_table request; closing connection"},
		{"policy", "this is not an attribute\n\n", "bad policy request; closing connection"},
		{"exim", "garbage\n", "bad exim request"},
	}
	const total = 2000
	each := total / len(floods)
	start := time.Now()
	var wg sync.WaitGroup
	for _, f := range floods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := sendBad(d.listen[f.listener], f.request); err != nil {
					t.Errorf("%s: request %d: %v", f.listener, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d malformed requests in %v", total, time.Since(start).Round(time.Millisecond))

	// The daemon logged each warning before it closed the connection;
	// the summaries pending are written when it stops.
	if code := d.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("tlspolicyd exited with %d after SIGINT, want 0", code)
	}
	recs := logRecords(t, d)
	if len(recs) >= total/10 {
		t.Errorf("%d malformed requests made %d log lines, want fewer than %d", total, len(recs), total/10)
	}
	for _, f := range floods {
		written := len(filterLog(recs, func(r logRecord) bool { return r["msg"] == f.warning }))
		summaries := filterLog(recs, func(r logRecord) bool { return r["msg"] == summaryMessage && r["kind"] == f.warning })
		suppressed := 0
		for _, s := range summaries {
			n, _ := s["suppressed"].(float64)
			suppressed += int(n)
			if s["level"] != "WARN" || n <= 0 {
				t.Errorf("%s: summary %v, want level WARN and a count", f.listener, s)
			}
		}
		if len(summaries) == 0 || written+suppressed != each {
			t.Errorf("%s: %d %q records written, %d suppressed in %d summaries; want a summary, and %d in all",
				f.listener, written, f.warning, suppressed, len(summaries), each)
		}
	}
}

// sendBad sends request on a connection of its own and reads until the
// daemon closes it.
func sendBad(addr, request string) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, request); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("waiting for the daemon to close: %w", err)
	}
	return nil
}

// checkLogAttributes fails the test if a line of the daemon's log carries
// an attribute twice (slog writes both; log shippers keep one, or reject
// the line).
func checkLogAttributes(t *testing.T, d *daemon) {
	t.Helper()
	data, _ := os.ReadFile(d.logPath)
	for i, line := range strings.Split(string(data), "\n") {
		if dups := testlog.DuplicateKeys(line); dups != nil {
			t.Errorf("daemon log line %d carries %q more than once: %s", i+1, dups, line)
		}
	}
}
