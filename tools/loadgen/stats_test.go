package main

import (
	"bufio"
	"context"
	"errors"
	"math"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 12345, 1e6, 1e9, 123456789012, maxLatency} {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside [0, %d)", v, i, numBuckets)
		}
		lower, width := bucketRange(i)
		if v < lower || v >= lower+width {
			t.Errorf("value %d in bucket %d = [%d, %d)", v, i, lower, lower+width)
		}
		if v >= subCount && float64(width)/float64(lower) > 1.0/subHalf {
			t.Errorf("bucket %d: width %d too wide for %d", i, width, lower)
		}
	}
	if got := bucketOf(maxLatency + 12345); got != numBuckets-1 {
		t.Errorf("over-long value in bucket %d, want the last (%d)", got, numBuckets-1)
	}
}

func TestPercentile(t *testing.T) {
	var h histogram
	if got := h.percentile(0.5); got != 0 {
		t.Errorf("empty histogram: p50 = %v, want 0", got)
	}
	// Below 128 ns every value has a bucket of its own: exact nearest rank.
	for v := 1; v <= 100; v++ {
		h.record(time.Duration(v))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {0.01, 1}, {0.5, 50}, {0.505, 51}, {0.99, 99}, {1, 100}} {
		if got := h.percentile(c.p); got != c.want {
			t.Errorf("1..100ns: p%v = %v, want %v", c.p*100, got, c.want)
		}
	}

	// Microseconds, shuffled: within the bucket precision of the exact rank.
	var g histogram
	for i := range 1000 {
		g.record(time.Duration((i*7919)%1000+1) * time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}} {
		got := g.percentile(c.p)
		if rel := math.Abs(float64(got-c.want)) / float64(c.want); rel > 1.0/subHalf {
			t.Errorf("1..1000µs: p%v = %v, want %v within %.1f%%", c.p*100, got, c.want, 100.0/subHalf)
		}
	}

	// Merging adds counts.
	g.merge(&h)
	if g.n != 1100 {
		t.Errorf("merged n = %d, want 1100", g.n)
	}
	if got := g.percentile(0.05); got != 55 {
		t.Errorf("merged p5 = %v, want 55ns", got)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	// comm may hold spaces and ')': fields are counted after the last ')'.
	line := "4242 (tls pol) d) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 37 0 0 20 0 7 0 123456 0 0\n"
	got, err := parseProcStat([]byte(line))
	if err != nil || got != 187 {
		t.Errorf("parseProcStat = %d, %v; want 187 (150+37)", got, err)
	}
	for _, bad := range []string{"", "4242 tlspolicyd S 1", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 x 37"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
	// And the live file of this process parses.
	if _, err := processCPU(os.Getpid()); err != nil {
		t.Errorf("processCPU(self): %v", err)
	}
}

func TestReadNetstring(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"6:OK may,", "OK may", true},
		{"0:,", "", true},
		{"9:NOTFOUND ,", "NOTFOUND ", true},
		{"6:OK may;", "", false},
		{"x6:OK may,", "", false},
		{":OK,", "", false},
		{"100001:", "", false},
		{"6:OK m", "", false},
	} {
		got, err := readNetstring(bufio.NewReaderSize(strings.NewReader(c.in), maxNetstring+16))
		if (err == nil) != c.ok || string(got) != c.want {
			t.Errorf("readNetstring(%q) = %q, %v", c.in, got, err)
		}
	}
}

// listen runs serve on a fresh loopback listener, closed when the test ends.
func listen(t *testing.T, serve func(net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serve(ln)
	return ln.Addr().String()
}

func selfCPU() (time.Duration, error) { return processCPU(os.Getpid()) }

func TestLoadAgainstReference(t *testing.T) {
	addr := listen(t, serveReference)
	res, err := runLoad(context.Background(), loadConfig{
		addr: addr, conns: 2, warmup: 50 * time.Millisecond, duration: 200 * time.Millisecond, serverCPU: selfCPU,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.FirstErr != nil {
		t.Fatalf("%d errors, first %v", res.Errors, res.FirstErr)
	}
	if res.Lookups < 100 {
		t.Errorf("only %d lookups in 200ms", res.Lookups)
	}
	if res.Lookups != res.Hist.n {
		t.Errorf("lookups %d, histogram holds %d", res.Lookups, res.Hist.n)
	}
	if res.Elapsed < 200*time.Millisecond || res.Elapsed > 2*time.Second {
		t.Errorf("measured window %v, want about 200ms", res.Elapsed)
	}
	if p50, p99 := res.Hist.percentile(0.5), res.Hist.percentile(0.99); p50 <= 0 || p99 < p50 {
		t.Errorf("p50 %v, p99 %v", p50, p99)
	}
	if res.ServerCPU < 0 {
		t.Errorf("server CPU %v", res.ServerCPU)
	}
}

// constServer answers every request with reply; a wrong reply must count as
// an error, and a malformed one must end that connection's loop.
func constServer(reply string) func(net.Listener) error {
	return func(ln net.Listener) error {
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					n, err := readLength(br)
					if err != nil {
						return
					}
					if _, err := br.Discard(n + 1); err != nil {
						return
					}
					if _, err := c.Write([]byte(reply)); err != nil {
						return
					}
				}
			}()
		}
	}
}

func TestLoadCountsBadReplies(t *testing.T) {
	for _, c := range []struct {
		reply, want string
		bad         bool // well framed: the loop goes on
	}{
		{"9:NOTFOUND ,", "NOTFOUND", true},
		{"6:OK may;", "malformed", false},
	} {
		addr := listen(t, constServer(c.reply))
		res, err := runLoad(context.Background(), loadConfig{
			addr: addr, conns: 2, warmup: 10 * time.Millisecond, duration: 50 * time.Millisecond, serverCPU: selfCPU,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Lookups != 0 || res.FirstErr == nil || !strings.Contains(res.FirstErr.Error(), c.want) {
			t.Errorf("reply %q: %d lookups, first error %v; want 0 and %q", c.reply, res.Lookups, res.FirstErr, c.want)
		}
		var bad *badReplyError
		if errors.As(res.FirstErr, &bad) != c.bad {
			t.Errorf("reply %q: error %v, bad reply %v", c.reply, res.FirstErr, c.bad)
		}
		if c.bad && res.Errors < 10 || !c.bad && res.Errors != 2 {
			t.Errorf("reply %q: %d errors", c.reply, res.Errors)
		}
	}
}

func TestEncodeRequests(t *testing.T) {
	got := encodeRequests([]string{"example.org", "[relay.example.net]:587"})
	want := []string{"21:tlspolicy example.org,", "33:tlspolicy [relay.example.net]:587,"}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Errorf("request %d = %q, want %q", i, got[i], want[i])
		}
	}
}
