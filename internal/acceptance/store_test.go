package acceptance

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/state"
)

const (
	nxDestinations = 20000
	nxConns        = 8
	nxStoreLimit   = 10 << 20
)

// TestStoreFailedProbesInMemoryOnly: 20,000 destinations that do not
// exist, each looked up once (each lookup waits for its probe, which finds
// NXDOMAIN), leave a state file under 10 MiB: failed probes are kept in
// memory only. What the file holds is each destination's first answer in
// the decision history and its entry in the history's index: 7.3-8.5 MiB
// with the race detector, depending on how busy the machine is (slower
// writes make smaller batches). Every lookup answers the floor.
func TestStoreFailedProbesInMemoryOnly(t *testing.T) {
	t.Parallel()
	dns := fakedns.MustStart(t) // every name it does not hold is NXDOMAIN
	d := startDaemon(t, listenInet+fmt.Sprintf(`dns:
  servers: [%q]
  timeout: 2s
probe:
  wait: %s
  timeout: %s
state:
  path: @DIR@/state.db
mtasts:
  enabled: false
defaults:
  level: may
  upgrade: encrypt
`, dns.Addr(), probeWait, probeTimeout))
	addr := d.listen["socketmap"]

	start := time.Now()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		lat     []time.Duration
		failure error
	)
	for c := range nxConns {
		wg.Go(func() {
			l, err := nxLookups(addr, c)
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, l...)
			if err != nil && failure == nil {
				failure = err
			}
		})
	}
	wg.Wait()
	if failure != nil {
		t.Fatal(failure)
	}
	took := time.Since(start)
	slices.Sort(lat)
	t.Logf("%d lookups of NXDOMAIN destinations over %d connections in %v: latency p50 %v, p90 %v, p99 %v, max %v",
		len(lat), nxConns, took.Round(time.Millisecond), lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)*99/100], lat[len(lat)-1])
	waitMetric(t, d, "tlspolicyd_probes_total", map[string]string{"cause": "nxdomain"}, nxDestinations, probeSettle)

	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("the daemon exited %d after SIGTERM\n%s", code, d.logText())
	}
	path := filepath.Join(d.dir, "state.db")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("state file after %d NXDOMAIN destinations: %d bytes (%.2f MiB)", nxDestinations, fi.Size(), float64(fi.Size())/(1<<20))
	if fi.Size() >= nxStoreLimit {
		t.Errorf("state file %d bytes, want under %d", fi.Size(), nxStoreLimit)
	}
	st, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := 0
	if err := st.Probes(time.Time{}, 0, func(state.Probe) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d findings stored, want none (every probe failed)", n)
	}
}

// nxLookups looks up its share of the NXDOMAIN destinations (nxN.test
// with N = conn mod nxConns) over one socketmap connection, and returns
// each lookup's latency. Each must answer the floor.
func nxLookups(addr string, conn int) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	var lat []time.Duration
	for i := conn; i < nxDestinations; i += nxConns {
		key := fmt.Sprintf("nx%d.test", i)
		t0 := time.Now()
		c.SetDeadline(t0.Add(probeWait + ioTimeout))
		if _, err := c.Write([]byte(netstring("tlspolicy " + key))); err != nil {
			return lat, err
		}
		reply, err := readNetstring(r, 100000)
		if err != nil {
			return lat, fmt.Errorf("lookup of %s: %w", key, err)
		}
		if reply != "OK "+may {
			return lat, fmt.Errorf("lookup of %s: %q, want %q", key, reply, "OK "+may)
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

// TestStoreDamagedFileRefused: an empty state file, or one cut short,
// stops the daemon with an error that names the file and says what to do;
// the file is left as it was.
func TestStoreDamagedFileRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	whole := filepath.Join(dir, "whole.db")
	st, err := state.OpenBolt(whole, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var pins []state.Pin
	for i := range 2000 {
		pins = append(pins, state.Pin{Key: fmt.Sprintf("p%d.test", i), Level: "verify", FirstSeen: now, LastSeen: now,
			Expires: now.Add(time.Hour), Source: "admin"})
	}
	if err := st.PutPins(pins...); err != nil {
		t.Fatal(err)
	}
	st.Close()
	image, err := os.ReadFile(whole)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		content []byte
		problem string
	}{
		{"empty", nil, "is empty or truncated"},
		{"cut short", image[:len(image)/3], "truncated"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "state.db")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			out := serveMustFail(t, dir, path)
			for _, want := range []string{"state file " + path + " ", tt.problem, "move it aside", "restore it from backup"} {
				if !strings.Contains(out, want) {
					t.Errorf("the error does not say %q:\n%s", want, out)
				}
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, tt.content) {
				t.Errorf("the daemon changed the file: %d bytes, was %d", len(got), len(tt.content))
			}
		})
	}
}
