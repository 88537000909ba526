package acceptance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// Pins (issue 5): what destinations proved is remembered across restarts,
// can be managed with `tlspolicyd pins`, survives kill -9, and a damaged or
// busy store stops the daemon instead of letting it start without pins.

// cliLimit bounds one run of a tlspolicyd command.
const cliLimit = 30 * time.Second

// runTool runs tlspolicyd with args and returns its exit code, standard
// output and standard error apart (runCLI merges them).
func runTool(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, daemonBin, args...)
	cmd.Env = daemonEnv
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tlspolicyd %s: did not finish within %v; stderr:\n%s", strings.Join(args, " "), cliLimit, se.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running tlspolicyd: %v", err)
	}
	checkRaces(t, "tlspolicyd "+strings.Join(args, " "), se.String())
	return cmd.ProcessState.ExitCode(), so.String(), se.String()
}

// listPins runs `tlspolicyd pins -config config list -json` (through the
// daemon when one holds the store, on the file otherwise).
func listPins(t *testing.T, config string) []pinJSON {
	t.Helper()
	code, out, errOut := runTool(t, "pins", "-config", config, "list", "-json")
	if code != 0 {
		t.Fatalf("tlspolicyd pins list -json: exit %d, stderr %q", code, errOut)
	}
	var pins []pinJSON
	if err := json.Unmarshal([]byte(out), &pins); err != nil {
		t.Fatalf("tlspolicyd pins list -json: not a JSON list of pins: %v\n%s", err, out)
	}
	return pins
}

// pinsByKey is listPins by destination.
func pinsByKey(t *testing.T, config string) map[string]pinJSON {
	t.Helper()
	m := map[string]pinJSON{}
	for _, p := range listPins(t, config) {
		m[p.Destination] = p
	}
	return m
}

// withState points a configuration template at a state file of the test's
// choosing (the harness gives each daemon a directory of its own; daemons
// that share a store must be told where it is).
func withState(t *testing.T, config, path string) string {
	t.Helper()
	const harness = "path: @DIR@/state.db"
	if !strings.Contains(config, harness) {
		t.Fatalf("the configuration has no %q to replace", harness)
	}
	return strings.Replace(config, harness, "path: "+path, 1)
}

// logText returns what the daemon has logged so far.
func (d *daemon) logText() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// TestPinsRestart: pins and cached probe results survive a restart. A
// daemon probes and pins two destinations (verify and encrypt) and probes a
// third that cannot be pinned (no STARTTLS); it stops with SIGTERM. Then the
// world goes dark (the fake MX hosts closed, the DNS failing), and a new
// daemon on the same store answers the pinned levels from its very first
// lookups, without a single probe or DNS query.
func TestPinsRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t,
		mxHost{"pinverify.test", "mx.pinverify.test", "127.0.0.71",
			fakemx.Options{Hostname: "mx.pinverify.test", TLS: w.verifiedTLS(t, "mx.pinverify.test")}},
		mxHost{"pinencrypt.test", "mx.pinencrypt.test", "127.0.0.72",
			fakemx.Options{Hostname: "mx.pinencrypt.test", TLS: selfSignedTLS(t, "mx.pinencrypt.test")}},
		mxHost{"pinplain.test", "mx.pinplain.test", "127.0.0.73", fakemx.Options{Hostname: "mx.pinplain.test"}},
	)
	statePath := filepath.Join(t.TempDir(), "state.db")
	config := withState(t, w.probeConfig(t, `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: pinverify.test
    upgrade: verify
  - match: pinencrypt.test
    upgrade: verify
  - match: pinplain.test
    upgrade: verify
`), statePath)

	// The first daemon learns.
	d1 := startDaemon(t, config)
	table := d1.socketmap(t, "tlspolicy")
	waitAnswer(t, table, "pinverify.test", verify, []string{may}, probeSettle)
	waitAnswer(t, table, "pinencrypt.test", encrypt, []string{may}, probeSettle)
	checkLookup(t, table, lookup{key: "pinplain.test", want: may}, "")
	waitMetric(t, d1, "tlspolicyd_probes_total", map[string]string{"cause": "no_starttls"}, 1, probeSettle)
	waitMetric(t, d1, "tlspolicyd_pins", nil, 2, probeSettle)
	before := pinsByKey(t, d1.configPath)
	if code := d1.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("the first daemon exited %d after SIGTERM, want 0\n%s", code, d1.logText())
	}

	// The world goes dark: any probe now fails, and any DNS query shows.
	for _, host := range []string{"mx.pinverify.test", "mx.pinencrypt.test", "mx.pinplain.test"} {
		w.server(t, host).Close()
	}
	for _, domain := range []string{"pinverify.test", "pinencrypt.test", "pinplain.test"} {
		w.dns.SetRcode(domain, 2) // SERVFAIL
	}
	queries := len(w.dns.Queries())

	// The second daemon remembers.
	d2 := startDaemon(t, config)
	table = d2.socketmap(t, "tlspolicy")
	checkLookup(t, table, lookup{key: "pinverify.test", want: verify}, "")
	checkLookup(t, table, lookup{key: "pinencrypt.test", want: encrypt}, "")
	checkLookup(t, table, lookup{key: "pinplain.test", want: may}, "")

	const cache = "tlspolicyd_probe_cache_requests_total"
	probes := d2.metric(t, "tlspolicyd_probes_total", nil)
	misses := d2.metric(t, cache, map[string]string{"result": "miss"})
	hits := d2.metric(t, cache, map[string]string{"result": "hit"})
	stale := d2.metric(t, cache, map[string]string{"result": "stale"})
	newQueries := len(w.dns.Queries()) - queries
	t.Logf("after the restart: probes %v, cache hit %v / stale %v / miss %v, DNS queries %d", probes, hits, stale, misses, newQueries)
	if probes != 0 || misses != 0 || stale != 0 || newQueries != 0 {
		t.Errorf("after the restart the daemon probed: tlspolicyd_probes_total %v, cache misses %v, stale hits %v, DNS queries %d; want all 0",
			probes, misses, stale, newQueries)
	}
	// pinencrypt.test (pinned below its upgrade) and pinplain.test (no
	// pin) were answered from restored probe results.
	if hits < 2 {
		t.Errorf("%s{result=\"hit\"} = %v after the restart, want at least 2 (restored results of pinencrypt.test and pinplain.test)", cache, hits)
	}
	if got := d2.metric(t, "tlspolicyd_pins", map[string]string{"level": "verify"}); got != 1 {
		t.Errorf(`tlspolicyd_pins{level="verify"} = %v after the restart, want 1`, got)
	}
	if got := d2.metric(t, "tlspolicyd_pins", map[string]string{"level": "encrypt"}); got != 1 {
		t.Errorf(`tlspolicyd_pins{level="encrypt"} = %v after the restart, want 1`, got)
	}
	if size := d2.metric(t, "tlspolicyd_state_store_size_bytes", nil); size <= 0 {
		t.Errorf("tlspolicyd_state_store_size_bytes = %v, want the store's size", size)
	}
	if n := d2.metric(t, "tlspolicyd_state_store_errors_total", nil); n != 0 {
		t.Errorf("tlspolicyd_state_store_errors_total = %v, want 0", n)
	}
	if line, ok := findLine(d2.logText(), "state loaded"); !ok || !strings.Contains(line, "pins=2") || !strings.Contains(line, "probe_results=3") {
		t.Errorf("the daemon log's \"state loaded\" line: %q, want pins=2 probe_results=3", line)
	}

	after := pinsByKey(t, d2.configPath)
	for dest, level := range map[string]string{"pinverify.test": "verify", "pinencrypt.test": "encrypt"} {
		p, ok := after[dest]
		if !ok || p.Level != level || p.Source != "probe" {
			t.Errorf("pins list -json after the restart: %s = %+v (present %v), want level %s, source probe", dest, p, ok, level)
			continue
		}
		if b := before[dest]; !p.FirstSeen.Equal(b.FirstSeen) || !p.Expires.Equal(b.Expires) {
			t.Errorf("pin of %s changed across the restart: before %+v, after %+v", dest, b, p)
		}
	}
	if _, ok := after["pinplain.test"]; ok || len(after) != 2 {
		t.Errorf("pins after the restart: %+v, want only pinverify.test and pinencrypt.test", after)
	}
}

// adminRules: partner.test may be raised to verify (by a probe or a pin);
// optout.test opts out of evidence, pins included.
const adminRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: partner.test
    upgrade: verify
  - match: optout.test
    upgrade: none
`

// TestPinsAdmin drives `tlspolicyd pins` against a running daemon (through
// its HTTP listener: the daemon holds the store) and then, with the daemon
// stopped, on the store file itself.
func TestPinsAdmin(t *testing.T) {
	t.Parallel()
	statePath := filepath.Join(t.TempDir(), "state.db")
	config := withState(t, listenInet+hermetic+"probe:\n  wait: 1s\n"+adminRules, statePath)
	d := startDaemon(t, config)
	table := d.socketmap(t, "tlspolicy")
	pins := func(args ...string) (int, string, string) {
		t.Helper()
		code, out, errOut := runTool(t, append([]string{"pins", "-config", d.configPath}, args...)...)
		t.Logf("tlspolicyd pins %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		return code, out, errOut
	}

	// No pin: the floor (the probe fails, DNS is nowhere).
	checkLookup(t, table, lookup{key: "partner.test", want: may}, "")

	if code, out, _ := pins("add", "partner.test", "verify"); code != 0 || !strings.Contains(out, "pinned partner.test at verify") {
		t.Fatalf("pins add partner.test verify: exit %d, %q; want exit 0, \"pinned partner.test at verify ...\"", code, out)
	}
	// The very next lookup carries the pin.
	checkLookup(t, table, lookup{key: "partner.test", want: verify}, "")
	if _, ok := findLine(d.logText(), "pin added by administrator", "partner.test"); !ok {
		t.Errorf("the daemon did not log the pin added through it (\"pin added by administrator\")")
	}
	if got := d.metric(t, "tlspolicyd_pins", map[string]string{"level": "verify"}); got != 1 {
		t.Errorf(`tlspolicyd_pins{level="verify"} = %v, want 1`, got)
	}
	// upgrade: none ignores pins.
	if code, _, _ := pins("add", "optout.test", "verify"); code != 0 {
		t.Errorf("pins add optout.test verify: exit %d, want 0", code)
	}
	checkLookup(t, table, lookup{key: "optout.test", want: may}, "")

	code, out, _ := pins("list")
	if line, ok := findLine(out, "partner.test"); code != 0 || !ok || !strings.Contains(line, "verify") || !strings.Contains(line, "admin") {
		t.Errorf("pins list: exit %d, row of partner.test %q; want exit 0 and a row with verify, admin", code, line)
	}
	p, ok := pinsByKey(t, d.configPath)["partner.test"]
	if !ok || p.Level != "verify" || p.Source != "admin" || !p.Expires.After(time.Now().Add(700*time.Hour)) {
		t.Errorf("pins list -json: partner.test = %+v (present %v); want verify, source admin, expiring in about 720h", p, ok)
	}

	// Refused: a level a pin cannot have, an unknown destination.
	if code, _, errOut := pins("add", "partner.test", "secure"); code != 1 || !strings.Contains(errOut, "encrypt or verify") {
		t.Errorf("pins add partner.test secure: exit %d, stderr %q; want exit 1 naming encrypt or verify", code, errOut)
	}
	if code, _, errOut := pins("remove", "unknown.test"); code != 1 || !strings.Contains(errOut, "no pin for unknown.test") {
		t.Errorf("pins remove unknown.test: exit %d, stderr %q; want exit 1, \"no pin for unknown.test\"", code, errOut)
	}

	if code, out, _ := pins("remove", "partner.test"); code != 0 || !strings.Contains(out, "removed") {
		t.Errorf("pins remove partner.test: exit %d, %q; want exit 0", code, out)
	}
	checkLookup(t, table, lookup{key: "partner.test", want: may}, "")
	if code, _, _ := pins("remove", "partner.test"); code != 1 {
		t.Errorf("pins remove partner.test a second time: exit %d, want 1", code)
	}
	if got := d.metric(t, "tlspolicyd_pins", map[string]string{"level": "verify"}); got != 1 {
		t.Errorf(`tlspolicyd_pins{level="verify"} = %v after the removal, want 1 (optout.test)`, got)
	}

	// The daemon stops; the same commands work on the file.
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("daemon exited %d after SIGTERM, want 0", code)
	}
	if code, out, _ := pins("add", "partner.test", "encrypt"); code != 0 || !strings.Contains(out, "pinned partner.test at encrypt") {
		t.Errorf("offline pins add partner.test encrypt: exit %d, %q; want exit 0", code, out)
	}
	if code, _, _ := pins("add", "other.test", "verify"); code != 0 {
		t.Errorf("offline pins add other.test verify: exit %d, want 0", code)
	}
	offline := pinsByKey(t, d.configPath)
	if p := offline["partner.test"]; p.Level != "encrypt" || p.Source != "admin" {
		t.Errorf("offline pins list -json: partner.test = %+v; want encrypt, admin", p)
	}
	if code, out, _ := pins("list"); code != 0 || !strings.Contains(out, "other.test") || !strings.Contains(out, "optout.test") {
		t.Errorf("offline pins list: exit %d, want rows for other.test and optout.test:\n%s", code, out)
	}
	if code, _, _ := pins("remove", "other.test"); code != 0 {
		t.Errorf("offline pins remove other.test: exit %d, want 0", code)
	}
	if code, _, errOut := pins("remove", "other.test"); code != 1 || !strings.Contains(errOut, "no pin for other.test") {
		t.Errorf("offline pins remove other.test a second time: exit %d, stderr %q; want exit 1", code, errOut)
	}
	if _, ok := pinsByKey(t, d.configPath)["other.test"]; ok {
		t.Errorf("offline: other.test still listed after its removal")
	}

	// A daemon started on the file answers the pin added offline at once.
	d2 := startDaemon(t, config)
	checkLookup(t, d2.socketmap(t, "tlspolicy"), lookup{key: "partner.test", want: encrypt}, "")
	checkLookup(t, d2.socketmap(t, "tlspolicy"), lookup{key: "other.test", want: may}, "")
}

// crashRounds are the kill points of TestPinsCrash: the daemon is killed
// after this many confirmed pin writes of the round's stream.
var crashRounds = []int{40, 150, 300}

const (
	crashPins    = 500 // PUTs per round
	crashWorkers = 8
)

// TestPinsCrash: kill -9 in the middle of a stream of pin writes through the
// admin API, restart on the same file: the store opens, and every pin whose
// PUT was answered 200 before the kill is there.
func TestPinsCrash(t *testing.T) {
	t.Parallel()
	statePath := filepath.Join(t.TempDir(), "state.db")
	config := withState(t, listenInet+hermetic+adminRules, statePath)
	d := startDaemon(t, config)
	confirmed := map[string]bool{} // every round's
	for round, killAt := range crashRounds {
		got, sent, took := pinStream(t, d, round, killAt)
		for _, k := range got {
			confirmed[k] = true
		}
		t.Logf("round %d: killed after %d confirmed PUTs of %d sent, in %v", round+1, len(got), sent, took.Round(time.Millisecond))

		d = startDaemon(t, config) // fails the test if the store does not open
		if line, ok := findLine(d.logText(), "state loaded"); ok {
			t.Logf("round %d restart: %s", round+1, line)
		}
		stored := pinsByKey(t, d.configPath)
		var lost []string
		for k := range confirmed {
			if p, ok := stored[k]; !ok || p.Level != "encrypt" {
				lost = append(lost, k)
			}
		}
		sort.Strings(lost)
		if len(lost) > 0 {
			t.Fatalf("round %d: %d of %d pins confirmed (200) before the kill are missing after the restart: %q",
				round+1, len(lost), len(confirmed), lost)
		}
		t.Logf("round %d: %d pins stored, all %d confirmed ones among them", round+1, len(stored), len(confirmed))
		checkLookup(t, d.socketmap(t, "tlspolicy"), lookup{key: got[len(got)-1], want: encrypt}, "")
	}
}

// pinStream PUTs crashPins pins (dN.rROUND.test, encrypt) from crashWorkers
// goroutines and kills the daemon with SIGKILL once killAt of them were
// answered 200. It returns the destinations answered 200 (those answered
// after the kill was sent count too: the daemon answers only after its
// write), how many requests were sent, and how long until the kill.
func pinStream(t *testing.T, d *daemon, round, killAt int) (confirmed []string, sent int64, took time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	var (
		mu     sync.Mutex
		next   atomic.Int64
		nsent  atomic.Int64
		killed = make(chan struct{})
		once   sync.Once
		start  = time.Now()
		wg     sync.WaitGroup
	)
	kill := func() {
		once.Do(func() {
			took = time.Since(start)
			d.cmd.Process.Signal(syscall.SIGKILL)
			close(killed)
		})
	}
	for range crashWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= crashPins {
					return
				}
				select {
				case <-killed:
					return
				default:
				}
				dest := fmt.Sprintf("d%d.r%d.test", i, round+1)
				req, _ := http.NewRequest(http.MethodPut, "http://"+d.http+"/admin/pins/"+dest+"?level=encrypt", nil)
				nsent.Add(1)
				resp, err := client.Do(req)
				if err != nil {
					continue // the daemon is gone
				}
				var body pinJSON
				derr := json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || derr != nil || body.Destination != dest {
					t.Errorf("PUT /admin/pins/%s: %d, %+v, %v", dest, resp.StatusCode, body, derr)
					continue
				}
				mu.Lock()
				confirmed = append(confirmed, dest)
				n := len(confirmed)
				mu.Unlock()
				if n >= killAt {
					kill()
				}
			}
		}()
	}
	wg.Wait()
	kill() // if the stream ended first
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		t.Fatalf("the daemon did not die of SIGKILL within %v", stopTimeout)
	}
	d.stopped = true
	if len(confirmed) == 0 {
		t.Fatalf("round %d: no PUT was answered 200", round+1)
	}
	return confirmed, nsent.Load(), took
}

// TestPinsCorruptStore: a store file that is not a store, or one holding a
// record that does not decode, stops the daemon with an error naming the
// file (it must not start as if it had no pins, nor overwrite the file); a
// store held by a running daemon stops a second one with "in use".
func TestPinsCorruptStore(t *testing.T) {
	t.Parallel()

	t.Run("garbage", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		statePath := filepath.Join(dir, "state.db")
		garbage := make([]byte, 64<<10)
		rng := rand.NewChaCha8([32]byte{5})
		rng.Read(garbage)
		copy(garbage, "this is not a bbolt file\n")
		if err := os.WriteFile(statePath, garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		out := serveMustFail(t, dir, statePath)
		if !strings.Contains(out, "corrupt") {
			t.Errorf("the error does not say the store is corrupt:\n%s", out)
		}
		if b, _ := os.ReadFile(statePath); !bytes.Equal(b, garbage) {
			t.Errorf("the daemon changed the corrupt store file (%d bytes now, %d before)", len(b), len(garbage))
		}
	})

	t.Run("undecodable pin", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		statePath := filepath.Join(dir, "state.db")
		st, err := state.OpenBolt(statePath, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		good := state.Pin{Key: "good.test", Level: "verify", FirstSeen: now, LastSeen: now, Expires: now.Add(time.Hour), Source: "admin"}
		if err := st.PutPins(good); err != nil {
			t.Fatal(err)
		}
		st.Close()
		db, err := bolt.Open(statePath, 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("pins")).Put([]byte("bad.test"), []byte("{not json"))
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		out := serveMustFail(t, dir, statePath)
		if !strings.Contains(out, "bad.test") || !strings.Contains(out, "corrupt") {
			t.Errorf("the error does not name the bad record (bad.test) and say the store is corrupt:\n%s", out)
		}
	})

	t.Run("in use", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		statePath := filepath.Join(dir, "state.db")
		first := startDaemon(t, withState(t, listenInet+hermetic+adminRules, statePath))
		out := serveMustFail(t, dir, statePath)
		if !strings.Contains(out, "in use") {
			t.Errorf("the second daemon's error does not say the store is in use:\n%s", out)
		}
		if code, err := first.healthz(); err != nil || code != http.StatusOK {
			t.Errorf("the first daemon after the second one's attempt: /healthz %d, %v", code, err)
		}
	})
}

// serveMustFail runs tlspolicyd serve with its state at statePath and its
// own free ports, and expects it to exit non-zero, without serving, with an
// error naming the file. It returns the output.
func serveMustFail(t *testing.T, dir, statePath string) string {
	t.Helper()
	ports := freePorts(t, 3)
	config := filepath.Join(t.TempDir(), "rules.yaml")
	text := strings.NewReplacer(phSocketmap, ports[0], phTCPTable, ports[1], phHTTP, ports[2], phDNS, "127.0.0.1:1").
		Replace(withState(t, listenInet+hermetic+adminRules, statePath))
	if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, out, errOut := runTool(t, "serve", "-config", config)
	out += errOut
	t.Logf("tlspolicyd serve: exit %d after %v:\n%s", code, time.Since(start).Round(time.Millisecond), out)
	if code == 0 {
		t.Errorf("tlspolicyd serve on %s exited 0, want non-zero", statePath)
	}
	if strings.Contains(out, "tlspolicyd started") || strings.Contains(out, "state loaded") {
		t.Errorf("tlspolicyd serve started serving on a store it should have refused:\n%s", out)
	}
	if !strings.Contains(out, statePath) {
		t.Errorf("the error does not name the store file %s:\n%s", statePath, out)
	}
	return out
}
