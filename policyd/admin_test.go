package policyd

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
)

// TestJSONListsNeverNull: the JSON lists the daemon serves are [] when
// empty, never null, which scripts would have to special-case: the pins
// (none yet, and none again after the last is removed) and the
// destinations.
func TestJSONListsNeverNull(t *testing.T) {
	t.Parallel()
	d, _ := startDaemon(t, "defaults: {level: may}\n")
	base := "http://" + d.Addr("http").String()
	check := func(when, path, want string) {
		t.Helper()
		if code, body := httpGet(t, base+path); code != http.StatusOK || body != want+"\n" {
			t.Errorf("%s: GET %s = %d %q, want 200 %q", when, path, code, body, want)
		}
	}
	check("no pins", "/admin/pins", "[]")
	check("nothing known", "/api/v1/destinations", `{"destinations":[]}`)

	do := func(method, path string, want int) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d, want %d", method, path, resp.StatusCode, want)
		}
	}
	do(http.MethodPut, "/admin/pins/partner.test?level=verify", http.StatusOK)
	do(http.MethodDelete, "/admin/pins/partner.test", http.StatusNoContent)
	check("the last pin removed", "/admin/pins", "[]")
}

// TestViewMTASTSWithoutMX: a policy without mx lines shows "mx": [], not
// null.
func TestViewMTASTSWithoutMX(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, "defaults: {level: may}\n"), nil)
	v := e.ViewOf("none.test", Decision{Findings: &Findings{STS: &mtasts.Policy{Mode: mtasts.ModeNone, ID: "1"}}})
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"mta_sts":{"mode":"none","id":"1","mx":[]`) {
		t.Errorf("view: %s\nwant mta_sts with \"mx\":[]", b)
	}
}

// TestDaemonLogsEachAttributeOnce: what the wire servers log about bad
// input carries the protocol and the remote address once each. (The
// server adds them; a logger that already carried them would repeat them.)
func TestDaemonLogsEachAttributeOnce(t *testing.T) {
	t.Parallel()
	p := mustLoad(t, "listen:\n  socketmap: 127.0.0.1:0\n  tcptable: 127.0.0.1:0\ndefaults: {level: may}\n")
	p.Settings.StatePath = filepath.Join(t.TempDir(), "state.db")
	log := &testlog.Buffer{}
	reg := prometheus.NewRegistry()
	d, err := NewDaemon(p, Options{Registerer: reg, Gatherer: reg, Logger: log.Logger(), Probe: ProbeDeps{Resolver: offlineResolver{}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	}()
	for protocol, bad := range map[string]string{"socketmap": "abc:xyz,", "tcptable": "hello\n"} {
		nc, err := net.Dial("tcp", d.Addr(protocol).String())
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(nc, bad)
		io.Copy(io.Discard, nc) // until the server closes, having logged
		nc.Close()
	}
	text := log.String()
	for _, want := range []string{"protocol=socketmap remote=", "protocol=tcptable remote="} {
		if !strings.Contains(text, want) {
			t.Errorf("log lacks %q:\n%s", want, text)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if dups := testlog.DuplicateKeys(line); dups != nil {
			t.Errorf("%q more than once: %s", dups, line)
		}
	}
}
