package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// keys is the lookup mix, in the forms Postfix sends (it does not change
// case). Against the benchmark configuration they exercise an exact rule,
// a parent-domain rule, a verbatim next hop and the defaults, with and
// without mixed case. Every worker walks this list in order from its own
// starting point, so a run is deterministic and the mix is even.
var keys = []string{
	"example.org",             // exact rule
	"mx1.example.org",         // subdomain rule (.example.org)
	"[relay.example.net]:587", // next hop written verbatim
	"someone.test",            // no rule: defaults
	"Some.Example.ORG",        // subdomain rule, mixed case
	"SomeOne.TEST",            // no rule, mixed case
}

// noRule is the index in keys of a key that no rule names.
const noRule = 3

// mapName is the socketmap name Postfix puts before the key.
const mapName = "tlspolicy"

// encodeRequests frames each key once, before the run, so the load loop
// only writes ready-made bytes.
func encodeRequests(keys []string) [][]byte {
	reqs := make([][]byte, len(keys))
	for i, k := range keys {
		p := mapName + " " + k
		reqs[i] = fmt.Appendf(nil, "%d:%s,", len(p), p)
	}
	return reqs
}

// loadConfig describes one measured run against one server.
type loadConfig struct {
	addr     string
	conns    int
	warmup   time.Duration
	duration time.Duration
	// serverCPU reads the server process's CPU time so far.
	serverCPU func() (time.Duration, error)
}

// loadResult is what one run measured. Only requests that started and
// finished inside the measured window are counted; errors are counted over
// the whole run, warmup included.
type loadResult struct {
	Lookups   uint64
	Errors    uint64
	FirstErr  error
	Elapsed   time.Duration // measured window, wall clock
	ServerCPU time.Duration // server CPU time used in the window
	ClientCPU time.Duration // this process's CPU time in the window
	Hist      *histogram
}

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// runLoad opens cfg.conns persistent connections to cfg.addr and keeps one
// request outstanding on each, as a Postfix smtp process does, for the
// warmup and then the measured window. The server's CPU time is read just
// before and just after the window.
func runLoad(ctx context.Context, cfg loadConfig) (*loadResult, error) {
	reqs := encodeRequests(keys)
	conns := make([]net.Conn, 0, cfg.conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var d net.Dialer
	for range cfg.conns {
		c, err := d.DialContext(ctx, "tcp", cfg.addr)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
	}

	// A server that stops answering must not hang the run: every
	// connection gets a generous overall deadline.
	deadline := time.Now().Add(cfg.warmup + cfg.duration + 30*time.Second)
	var phase atomic.Int32
	workers := make([]worker, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		c.SetDeadline(deadline)
		wg.Go(func() { workers[i].run(c, reqs, i, &phase) })
	}
	stop := func() {
		phase.Store(phaseStop)
		for _, c := range conns {
			c.SetDeadline(time.Now().Add(5 * time.Second))
		}
		wg.Wait()
	}

	if !sleep(ctx, cfg.warmup) {
		stop()
		return nil, ctx.Err()
	}
	srv0, err := cfg.serverCPU()
	if err != nil {
		stop()
		return nil, fmt.Errorf("server CPU: %w", err)
	}
	cli0, _ := processCPU(os.Getpid())
	t0 := time.Now()
	phase.Store(phaseMeasure)
	ok := sleep(ctx, cfg.duration)
	phase.Store(phaseStop)
	elapsed := time.Since(t0)
	srv1, err := cfg.serverCPU()
	cli1, _ := processCPU(os.Getpid())
	stop()
	if !ok {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("server CPU: %w", err)
	}

	res := &loadResult{
		Elapsed:   elapsed,
		ServerCPU: srv1 - srv0,
		ClientCPU: cli1 - cli0,
		Hist:      new(histogram),
	}
	for i := range workers {
		w := &workers[i]
		res.Hist.merge(&w.hist)
		res.Errors += w.errors
		if res.FirstErr == nil {
			res.FirstErr = w.err
		}
	}
	res.Lookups = res.Hist.n
	return res, nil
}

// sleep waits for d and reports false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// worker drives one connection. Its histogram is its own, so the loop
// shares nothing with the other workers but the phase flag.
type worker struct {
	hist   histogram
	errors uint64
	err    error
}

func (w *worker) run(c net.Conn, reqs [][]byte, first int, phase *atomic.Int32) {
	// The reader can hold the largest reply Postfix accepts, so a reply is
	// checked in place (Peek) without copying or allocating.
	br := bufio.NewReaderSize(c, maxNetstring+16)
	k := first % len(reqs)
	for {
		p := phase.Load()
		if p == phaseStop {
			return
		}
		start := time.Now()
		if _, err := c.Write(reqs[k]); err != nil {
			w.fail(err)
			return
		}
		err := readReply(br)
		lat := time.Since(start)
		if err != nil {
			w.fail(fmt.Errorf("key %q: %w", keys[k], err))
			var bad *badReplyError
			if !errors.As(err, &bad) {
				return // framing or I/O error: the connection is unusable
			}
		} else if p == phaseMeasure && phase.Load() == phaseMeasure {
			w.hist.record(lat)
		}
		if k++; k == len(reqs) {
			k = 0
		}
	}
}

func (w *worker) fail(err error) {
	w.errors++
	if w.err == nil {
		w.err = err
	}
}

// badReplyError is a well-framed reply that is not a policy ("OK ...").
type badReplyError struct{ reply string }

func (e *badReplyError) Error() string { return fmt.Sprintf("reply %q, want \"OK ...\"", e.reply) }

var okPrefix = []byte("OK ")

// readReply reads one reply netstring and checks that it is a policy
// answer. It allocates only when the reply is wrong.
func readReply(br *bufio.Reader) error {
	payload, err := readNetstring(br)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(payload, okPrefix) {
		return &badReplyError{string(payload)}
	}
	return nil
}

// readNetstring reads one netstring and returns its payload, which stays
// valid only until the next read from br. The reader's buffer must hold
// maxNetstring+1 bytes.
func readNetstring(br *bufio.Reader) ([]byte, error) {
	n, err := readLength(br)
	if err != nil {
		return nil, err
	}
	b, err := br.Peek(n + 1)
	if err != nil {
		return nil, err
	}
	if b[n] != ',' {
		return nil, errMalformed
	}
	br.Discard(n + 1)
	return b[:n], nil
}

// answers looks every key up once on one connection and returns the
// replies, to show what the server says before it is loaded.
func answers(ctx context.Context, addr string) ([]string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, maxNetstring+16)
	var out []string
	for i, req := range encodeRequests(keys) {
		if _, err := c.Write(req); err != nil {
			return nil, err
		}
		payload, err := readNetstring(br)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", keys[i], err)
		}
		out = append(out, string(payload))
	}
	return out, nil
}
