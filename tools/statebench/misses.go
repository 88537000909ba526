package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
)

// misses looks up o.nxdomain destinations that do not exist and reports
// the lookups' latency and the state file's size.
func misses(o options) error {
	dns, err := fakedns.Start("127.0.0.1:0") // NXDOMAIN for every name: it holds none
	if err != nil {
		return err
	}
	defer dns.Close()
	path := filepath.Join(o.dir, "state.db")
	d, err := launch(o.bin, o.dir, path, dns.Addr())
	if err != nil {
		return err
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		lat     []time.Duration
		failure error
	)
	start := time.Now()
	for c := range o.conns {
		wg.Go(func() {
			l, err := lookups(d.socketmap, c, o.conns, o.nxdomain)
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, l...)
			if err != nil && failure == nil {
				failure = err
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if err := d.stop(); err != nil {
		return err
	}
	if failure != nil {
		return failure
	}
	slices.Sort(lat)
	size, err := fileSize(path)
	if err != nil {
		return err
	}
	fmt.Printf("%d misses over %d connections in %v (%.0f/s): latency p50 %v, p90 %v, p99 %v, max %v; state file %d bytes (%.2f MiB)\n",
		len(lat), o.conns, took.Round(time.Millisecond), float64(len(lat))/took.Seconds(),
		lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)*99/100], lat[len(lat)-1], size, float64(size)/(1<<20))
	return nil
}

// lookups looks up nxI.bench.test for I = conn, conn+conns, ... below n
// over one socketmap connection and returns each lookup's latency.
func lookups(addr string, conn, conns, n int) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	var lat []time.Duration
	for i := conn; i < n; i += conns {
		req := "tlspolicy nx" + strconv.Itoa(i) + ".bench.test"
		t0 := time.Now()
		c.SetDeadline(t0.Add(30 * time.Second))
		if _, err := fmt.Fprintf(c, "%d:%s,", len(req), req); err != nil {
			return lat, err
		}
		reply, err := readNetstring(r)
		if err != nil {
			return lat, err
		}
		if !strings.HasPrefix(reply, "OK ") {
			return lat, fmt.Errorf("%s: %q", req, reply)
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

func readNetstring(r *bufio.Reader) (string, error) {
	head, err := r.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(head, ":"))
	if err != nil || n < 0 || n > 100000 {
		return "", fmt.Errorf("bad netstring length %q", head)
	}
	b := make([]byte, n+1)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	if b[n] != ',' {
		return "", fmt.Errorf("netstring without its comma")
	}
	return string(b[:n]), nil
}
