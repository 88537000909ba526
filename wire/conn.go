package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// Conn is one client connection as a codec sees it. R and W are buffered for
// the connection's whole life; Buf and Scratch are scratch space that a codec
// reuses from request to request (reslice to zero, append, store back), so
// that a connection in steady state answers without allocating.
type Conn struct {
	R *bufio.Reader
	W *bufio.Writer
	// Buf holds the current request's payload, Scratch the reply being built.
	Buf, Scratch []byte

	nc  net.Conn
	srv *Server
	key string       // the client it belongs to, see clientOf
	log *slog.Logger // carries protocol and remote address
	// debug caches whether log logs at debug level, which a logger never
	// changes, so that requests do not ask the handler each time.
	debug bool
	// state is the connection's state word (see stateWord): written by
	// the connection's goroutine as requests begin and end, and read by
	// Shutdown, Close and a full listener looking for an idle connection.
	state atomic.Uint64
	names [4]string // recently seen map names, see internName
	// start is when the current (or last) request's first byte arrived,
	// on the server's clock; deadlines are computed from it. The armed
	// deadlines are remembered, on the same clock, so that they are set
	// only when they must move (see deadlineConn).
	start                       time.Duration
	readDeadline, writeDeadline time.Duration
	stats                       *ConnStats // this connection's request counters; nil without metrics

	// Where the connection sits in its Server's connTable; guarded by
	// the Server's mu, never touched by the request path.
	client    *client // nil once removed from the table
	heapIndex int     // index in client.conns
	// idleSince is since when the connection is idle, as the table last
	// reckoned it: the later of its state word's time and busyUntil.
	idleSince time.Duration
	// busyUntil is the deadline of the last request the table saw in
	// progress on the connection.
	busyUntil time.Duration
}

// Elapsed returns the time since the current request's first byte, for
// the request duration metric.
func (c *Conn) Elapsed() time.Duration { return c.srv.clock() - c.start }

// Connection states. A connection moves idle -> active when a request's
// first byte arrives and back when its reply is flushed; only its own
// goroutine makes these moves. Shutdown, and a full listener admitting a
// new connection, close only connections they can move from idle to
// closed, so they never cut a request or its reply; Close closes any.
const (
	stateIdle uint64 = iota
	stateActive
	stateClosed
	stateBits = 2 // the bits of the state word that hold the state
)

// stateWord packs a state with a time on the server's clock: when the
// current or last request began, or when the connection was accepted if it
// has had none. That time is where the idle timeout counts from, and what a
// full listener compares to find the longest-idle connection. Keeping both
// in one word lets the compare-and-swap that marks a request's start or end
// publish the time too, without another atomic operation per request.
// (Times are offsets from the server's start, never negative, and 62 bits
// of nanoseconds last a century.)
func stateWord(state uint64, since time.Duration) uint64 {
	return uint64(since)<<stateBits | state
}

// wordState and wordSince unpack a state word.
func wordState(w uint64) uint64        { return w & (1<<stateBits - 1) }
func wordSince(w uint64) time.Duration { return time.Duration(w >> stateBits) }

// claimIdle moves an idle connection to closed and reports whether it did;
// the caller then closes the network connection. A connection that is mid-
// request, or already closed, is left alone.
func (c *Conn) claimIdle() bool {
	w := c.state.Load()
	return wordState(w) == stateIdle && c.state.CompareAndSwap(w, stateClosed)
}

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Logger returns the connection's logger, which already carries the protocol
// and the remote address.
func (c *Conn) Logger() *slog.Logger { return c.log }

// countAnswer records a lookup's answer for tlspolicyd_answers_total.
func (c *Conn) countAnswer(mapName string, a Answer) {
	if c.stats != nil {
		c.stats.Answer(mapName, a.Label)
	}
}

// CountRequest records one answered request: result is one of the RequestResult
// constants, d the time from the complete request to its reply.
func (c *Conn) CountRequest(result RequestResult, d time.Duration) {
	if c.stats != nil {
		c.stats.Request(result, d)
	}
}

// endRequest ends every request a codec answers: it writes the reply the
// codec built in c.Scratch and counts the request under result. It returns
// the request's duration, for the codec's debug log, and the write error.
func (c *Conn) endRequest(result RequestResult) (time.Duration, error) {
	_, err := c.W.Write(c.Scratch)
	d := c.Elapsed()
	c.CountRequest(result, d)
	return d, err
}

// endLookup ends a table lookup whose reply the codec has framed into
// c.Scratch: it ends the request and logs it at debug level.
func (c *Conn) endLookup(ctx context.Context, result RequestResult, mapName string, key []byte) error {
	d, err := c.endRequest(result)
	if err != nil {
		return err
	}
	if c.debug {
		c.log.LogAttrs(ctx, slog.LevelDebug, "lookup", slog.String("map", mapName), slog.String("key", string(key)),
			slog.String("reply", string(bytes.TrimSuffix(c.Scratch, []byte{'\n'}))), slog.Duration("duration", d))
	}
	return nil
}

// rejectBadInput answers a request that could not be read. Bad input (err
// wrapping tooLong or malformed) gets a reply framed by frame, is counted
// and logged once, and closes the connection: after a framing error the
// stream cannot be trusted to resynchronise. I/O errors (timeout, EOF
// mid-request) have no one to answer and are returned as they are.
func (c *Conn) rejectBadInput(err, tooLong, malformed error, protocol string, frame func(dst []byte, reason string) []byte) error {
	var result RequestResult
	var reason string
	switch {
	case errors.Is(err, tooLong):
		result, reason = ResultOversized, replyTooLongRequest
	case errors.Is(err, malformed):
		result, reason = ResultMalformed, err.Error()
	default:
		return err
	}
	c.Scratch = frame(c.Scratch[:0], reason)
	_, werr := c.endRequest(result)
	c.log.Warn("bad "+protocol+" request; closing connection", "err", err)
	return errors.Join(err, werr)
}

// internName returns b as a string, reusing the string of an earlier request
// on this connection when equal. Map names come from a handful of values, so
// this saves converting (allocating) the name on every request.
func (c *Conn) internName(b []byte) string {
	for i, s := range c.names {
		if s != "" && s == string(b) { // the comparison does not allocate
			return c.names[i]
		}
	}
	s := string(b)
	copy(c.names[1:], c.names[:len(c.names)-1])
	c.names[0] = s
	return s
}

// newConn registers an accepted connection. When the listener is full it
// first closes the idle connection that connTable.evict chooses; if none is
// idle, or the server is shutting down, it closes nc instead and returns
// nil.
func (s *Server) newConn(nc net.Conn) *Conn {
	key := clientOf(nc) // may make a system call: not under mu
	s.mu.Lock()
	if s.inShutdown.Load() {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	now := s.clock()
	var victim *Conn
	var victimSince time.Duration
	if s.conns.n >= s.maxConns() {
		victim, victimSince = s.conns.evict(key, now)
		if victim == nil {
			s.mu.Unlock()
			s.refuse(nc, key)
			return nil
		}
	}
	c := &Conn{
		nc:    nc,
		srv:   s,
		key:   key,
		log:   s.logger().With("protocol", s.Protocol, "remote", nc.RemoteAddr().String()),
		start: now, // the idle timeout runs from here until the first request
		// No deadline is armed yet.
		readDeadline:  unarmed,
		writeDeadline: unarmed,
	}
	c.state.Store(stateWord(stateIdle, now))
	c.debug = c.log.Enabled(context.Background(), slog.LevelDebug)
	c.R = bufio.NewReader(deadlineConn{c})
	c.W = bufio.NewWriter(deadlineConn{c})
	s.conns.add(c)
	s.wg.Add(1) // under mu, ordered before Shutdown's Wait by inShutdown
	s.mu.Unlock()
	if victim != nil {
		// Counted and logged before the close, so that whoever sees the
		// close also sees them.
		if s.Metrics != nil {
			s.Metrics.Evicted.Inc()
		}
		victim.log.Warn("closed an idle connection to admit a new one: listener full",
			"client", victim.key, "idle", (now - victimSince).Round(time.Millisecond),
			"new_remote", nc.RemoteAddr().String(), "max_connections", s.maxConns())
		victim.nc.Close()
	}
	if s.Metrics != nil {
		s.Metrics.Open.Inc()
		c.stats = s.Metrics.OpenConn()
	}
	return c
}

// refuse closes a new connection that a full listener cannot admit: every
// connection it could close is in the middle of a request.
func (s *Server) refuse(nc net.Conn, key string) {
	// Counted and logged before the close, so that whoever sees the close
	// also sees them.
	if s.Metrics != nil {
		s.Metrics.Rejected.Inc()
	}
	s.logger().Warn("connection refused: listener full and no connection idle",
		"protocol", s.Protocol, "remote", nc.RemoteAddr().String(), "client", key, "max_connections", s.maxConns())
	nc.Close()
}

// serve runs the connection's request loop. A panic in the codec closes this
// connection only; the daemon and its other connections carry on.
func (c *Conn) serve() {
	s := c.srv
	defer func() {
		if v := recover(); v != nil {
			if s.Metrics != nil {
				s.Metrics.Panics.Inc()
			}
			c.log.Error("panic serving connection; closing it", "panic", v, "stack", string(debug.Stack()))
		}
		c.close()
	}()
	for {
		err := c.serveOne()
		if err == nil {
			continue
		}
		c.logEnd(err)
		return
	}
}

// errIdleClosed ends the loop of a connection that was closed while it was
// idle (by Shutdown, or by a full listener admitting another), or that went
// idle during a shutdown.
var errIdleClosed = errors.New("connection closed while idle")

// serveOne waits for the next request and serves it. It is the per-request
// path: no shared lock, no allocation, and deadlines are armed by
// deadlineConn only when a read or write may block.
func (c *Conn) serveOne() error {
	s := c.srv
	if _, err := c.R.Peek(1); err != nil {
		if wordState(c.state.Load()) == stateClosed {
			return errIdleClosed
		}
		return idleError{err}
	}
	start := s.clock()
	if !c.state.CompareAndSwap(stateWord(stateIdle, c.start), stateWord(stateActive, start)) {
		return errIdleClosed // Shutdown, or a full listener, got here first
	}
	c.start = start
	err := s.Codec.ServeRequest(s.ctx, c)
	// Flush even on error: a codec that closes on bad input has written
	// the reason.
	if ferr := c.W.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if !c.state.CompareAndSwap(stateWord(stateActive, c.start), stateWord(stateIdle, c.start)) {
		return errIdleClosed // Close cut the connection
	}
	if s.inShutdown.Load() {
		// Shutdown began while this request was in flight; its reply is
		// written, so the connection may go.
		return errIdleClosed
	}
	return nil
}

// deadlineSlack is how far a deadline may lag behind its ideal value before
// it is moved. Setting a deadline updates a timer in the runtime's poller,
// which costs about as much as answering a cached lookup; re-arming at most
// once a second per connection keeps it off the per-request path. A lagging
// deadline that fires is moved to its ideal value and the read or write
// goes on, so that no wait ends before its time.
const deadlineSlack = time.Second

// deadlineConn is the connection as its bufio reader and writer see it.
// bufio calls Read only when it has no buffered bytes left, so a request
// that arrived whole costs no deadline at all; a read while idle is bounded
// by IdleTimeout from the last request, a read in the middle of a request
// and every write by RequestTimeout from the request's first byte. Those
// deadlines are fixed points: bytes trickling in do not move them.
type deadlineConn struct{ c *Conn }

func (d deadlineConn) Read(p []byte) (int, error) {
	c := d.c
	want := c.start + c.srv.idleTimeout()
	if wordState(c.state.Load()) == stateActive {
		want = c.start + c.srv.requestTimeout()
	}
	if !armed(c.readDeadline, want) {
		c.nc.SetReadDeadline(c.srv.epoch.Add(want))
		c.readDeadline = want
	}
	for {
		n, err := c.nc.Read(p)
		if n > 0 || !early(err, c.readDeadline, want) {
			return n, err
		}
		c.nc.SetReadDeadline(c.srv.epoch.Add(want))
		c.readDeadline = want
	}
}

func (d deadlineConn) Write(p []byte) (int, error) {
	c := d.c
	want := c.start + c.srv.requestTimeout()
	if !armed(c.writeDeadline, want) {
		c.nc.SetWriteDeadline(c.srv.epoch.Add(want))
		c.writeDeadline = want
	}
	written := 0
	for {
		n, err := c.nc.Write(p[written:])
		written += n
		if !early(err, c.writeDeadline, want) {
			return written, err
		}
		c.nc.SetWriteDeadline(c.srv.epoch.Add(want))
		c.writeDeadline = want
	}
}

// early reports whether err is a deadline that fired before its time: the
// armed deadline cur lagged behind want (see deadlineSlack).
func early(err error, cur, want time.Duration) bool {
	return err != nil && cur != want && errors.Is(err, os.ErrDeadlineExceeded)
}

// unarmed is the armed deadline of a connection that has none yet: far
// enough before any wanted deadline that armed reports false.
const unarmed = time.Duration(math.MinInt64 / 2)

// armed reports whether the deadline cur may stand for want: not later,
// and earlier by less than deadlineSlack.
func armed(cur, want time.Duration) bool {
	return cur <= want && want-cur < deadlineSlack
}

// idleError is a read error while waiting for a request to begin.
type idleError struct{ err error }

func (e idleError) Error() string { return "waiting for a request: " + e.err.Error() }
func (e idleError) Unwrap() error { return e.err }

// logEnd logs why a connection ends, at a level fitting the cause. Codecs
// log bad input themselves (once), so closing after it is only debug.
func (c *Conn) logEnd(err error) {
	var idle idleError
	switch {
	case errors.Is(err, errIdleClosed), errors.Is(err, net.ErrClosed):
		return
	case errors.As(err, &idle):
		switch {
		case errors.Is(err, io.EOF):
			// The peer closed between requests: the normal end.
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.log.Debug("closing idle connection", "idle_timeout", c.srv.idleTimeout())
		default:
			c.log.Debug("connection lost while idle", "err", err)
		}
	case errors.Is(err, io.EOF):
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Warn("request timed out; closing connection", "request_timeout", c.srv.requestTimeout())
	default:
		c.log.Debug("closing connection", "err", err)
	}
}

// close closes the connection and forgets it.
func (c *Conn) close() {
	c.state.Store(stateClosed)
	c.nc.Close()
	s := c.srv
	s.mu.Lock()
	s.conns.remove(c)
	s.mu.Unlock()
	if s.Metrics != nil {
		s.Metrics.Open.Dec()
		s.Metrics.CloseConn(c.stats)
	}
	s.wg.Done()
}
