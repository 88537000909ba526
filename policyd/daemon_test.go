package policyd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/rules"
)

// testHead starts every configuration file the daemon tests write:
// listeners on ports the system picks, and the state file (%s) in the
// test's own directory, never the system's.
const testHead = "listen:\n  socketmap: 127.0.0.1:0\n  tcptable: 127.0.0.1:0\n  http: 127.0.0.1:0\nstate:\n  path: %s\n"

// testHeadLines is how many lines testHead takes.
const testHeadLines = 6

// writeTestConfig writes testHead and then config to file.
func writeTestConfig(t *testing.T, file, config string) {
	t.Helper()
	head := fmt.Sprintf(testHead, filepath.Join(filepath.Dir(file), "state.db"))
	if err := os.WriteFile(file, []byte(head+config), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startDaemon runs a Daemon in-process on loopback ports chosen by the
// system, from a configuration file written to a temp dir.
func startDaemon(t *testing.T, config string) (*Daemon, string) {
	t.Helper()
	return startDaemonLog(t, config, slog.New(slog.DiscardHandler))
}

// startDaemonLog is startDaemon with the daemon logging to log.
func startDaemonLog(t *testing.T, config string, log *slog.Logger) (*Daemon, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rules.yaml")
	writeTestConfig(t, file, config)
	p, err := LoadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, p, log)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return d, file
}

// offlineResolver fails every lookup at once: daemon tests must not wait
// for, or reach, a real resolver.
type offlineResolver struct{}

func (offlineResolver) LookupMX(ctx context.Context, domain string) ([]dnsclient.MX, error) {
	return nil, &dnsclient.Error{Name: domain, Qtype: "MX", Kind: dnsclient.ErrOther, Err: errors.New("offline test")}
}

func (offlineResolver) LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	return nil, &dnsclient.Error{Name: host, Qtype: "A", Kind: dnsclient.ErrOther, Err: errors.New("offline test")}
}

// newTestDaemon builds a daemon answering from p, with its state file in
// a temporary directory whatever p says.
func newTestDaemon(t testing.TB, p *rules.Rules) *Daemon {
	t.Helper()
	p.Settings.StatePath = filepath.Join(t.TempDir(), "state.db")
	return newDaemon(t, p, slog.New(slog.DiscardHandler))
}

// newDaemon builds a daemon answering from p, offline.
func newDaemon(t testing.TB, p *rules.Rules, log *slog.Logger) *Daemon {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := NewDaemon(p, Options{
		Registerer: reg, Gatherer: reg,
		Logger: log,
		Probe:  ProbeDeps{Resolver: offlineResolver{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func socketmapQuery(t *testing.T, r *bufio.Reader, w net.Conn, mapName, key string) string {
	t.Helper()
	payload := mapName + " " + key
	if _, err := io.WriteString(w, strconv.Itoa(len(payload))+":"+payload+","); err != nil {
		t.Fatal(err)
	}
	length, err := r.ReadString(':')
	n, cerr := strconv.Atoi(strings.TrimSuffix(length, ":"))
	if err != nil || cerr != nil {
		t.Fatalf("reading reply: %q, %v", length, err)
	}
	got := make([]byte, n+1)
	if _, err := io.ReadFull(r, got); err != nil || got[n] != ',' {
		t.Fatalf("reading reply: %q, %v", got, err)
	}
	return string(got[:n])
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestDaemonServesReloadsAndCounts(t *testing.T) {
	t.Parallel()
	d, file := startDaemon(t, "destinations:\n  - {match: example.org, level: encrypt}\n")
	nc, err := net.Dial("tcp", d.Addr("socketmap").String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := bufio.NewReader(nc)
	if got := socketmapQuery(t, r, nc, "tlspolicy", "example.org"); got != "OK encrypt protocols=>=TLSv1.2" {
		t.Fatalf("before reload: %q", got)
	}

	// A valid file takes effect on the same, persistent connection.
	writeTestConfig(t, file, "destinations:\n  - {match: example.org, level: verify}\n")
	if err := d.Reload(); err != nil {
		t.Fatalf("reload of a valid file: %v", err)
	}
	if got := socketmapQuery(t, r, nc, "tlspolicy", "example.org"); got != "OK verify protocols=>=TLSv1.2" {
		t.Fatalf("after reload: %q", got)
	}

	// An invalid file is refused; the running rules stay.
	writeTestConfig(t, file, "destinations:\n  - {match: example.org, level: verifyy}\n")
	err = d.Reload()
	if want := fmt.Sprintf("%s:%d:", file, testHeadLines+2); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("reload of an invalid file = %v, want an error naming %s", err, want)
	}
	if got := socketmapQuery(t, r, nc, "tlspolicy", "example.org"); got != "OK verify protocols=>=TLSv1.2" {
		t.Fatalf("after a refused reload: %q", got)
	}

	code, body := httpGet(t, "http://"+d.Addr("http").String()+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`tlspolicyd_config_reloads_total{result="success"} 1`,
		`tlspolicyd_config_reloads_total{result="failure"} 1`,
		`tlspolicyd_requests_total{protocol="socketmap",result="ok"} 3`,
		`tlspolicyd_connections_open{protocol="socketmap"} 1`,
		`tlspolicyd_request_duration_seconds_count{protocol="socketmap"} 3`,
		`tlspolicyd_config_rules 1`,
		`tlspolicyd_config_last_load_timestamp_seconds 1.`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, body := httpGet(t, "http://"+d.Addr("http").String()+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
}

func TestDaemonTCPTable(t *testing.T) {
	t.Parallel()
	d, _ := startDaemon(t, "destinations:\n  - {match: .example.org, level: encrypt}\n")
	nc, err := net.Dial("tcp", d.Addr("tcptable").String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := bufio.NewReader(nc)
	for key, want := range map[string]string{
		"mx.example.org":  "200 encrypt%20protocols=>=TLSv1.2\n",
		"unmatched.test":  "200 may\n",
		".unmatched.test": "500 NOTFOUND\n",
	} {
		io.WriteString(nc, "get "+key+"\n")
		got, err := r.ReadString('\n')
		if err != nil || got != want {
			t.Errorf("get %s = %q, %v; want %q", key, got, err, want)
		}
	}
}

func TestDaemonListenConflict(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	p := mustLoad(t, "listen:\n  socketmap: 127.0.0.1:0\n  tcptable: "+busy.Addr().String()+"\n")
	d := newTestDaemon(t, p)
	defer d.Shutdown(context.Background())
	if err := d.Start(); err == nil || !strings.Contains(err.Error(), "listen.tcptable") {
		t.Errorf("Start with a busy port = %v, want an error naming listen.tcptable", err)
	}
}
