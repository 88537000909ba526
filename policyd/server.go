package policyd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the Server fields left zero.
const (
	DefaultMaxConns       = 1000
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultRequestTimeout = 10 * time.Second
)

// Accept back-off bounds, as in net/http: a listener out of file descriptors
// must not spin, nor stall for long once descriptors are free again.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("policyd: server closed")

// Codec reads one request from a connection and writes its reply. One Codec
// serves every connection of a Server, concurrently: per-connection state
// belongs in the Conn, not in the Codec.
type Codec interface {
	// ServeRequest handles exactly one request on c: read it (bounded),
	// answer it into c.W. The core has already seen the request's first byte
	// and flushes c.W afterwards. It returns nil to keep the connection for
	// the next request, io.EOF when the peer closed cleanly between requests
	// (or the protocol has one request per connection), or any other error to
	// close the connection; a codec that closes on bad input writes its reply
	// first, so the peer learns why.
	ServeRequest(ctx context.Context, c *Conn) error
}

// Server runs one wire protocol: it accepts connections, bounds their number,
// puts a deadline on every wait, and hands each request to the Codec. Its
// shape (Serve, Close, Shutdown, ErrServerClosed) is net/http's, so main can
// run every protocol the same way. The exported fields must not be changed
// once Serve has been called.
type Server struct {
	Protocol string // metric and log label, e.g. "socketmap"
	Codec    Codec
	// MaxConns caps open connections (0: DefaultMaxConns). Over the cap a new
	// connection is closed at once and counted in Metrics.Rejected: an MTA
	// that opens too many must not starve the daemon of file descriptors.
	MaxConns int
	// IdleTimeout is how long a connection may wait for the next request's
	// first byte (0: DefaultIdleTimeout). Postfix closes its own idle
	// connections much sooner; this reclaims those of vanished peers.
	IdleTimeout time.Duration
	// RequestTimeout bounds reading the rest of one request, the lookup and
	// writing the reply (0: DefaultRequestTimeout). Keep it above the
	// engine's longest wait for a probe, or replies will miss their deadline.
	RequestTimeout time.Duration
	Logger         *slog.Logger     // nil: slog.Default()
	Metrics        *ProtocolMetrics // nil: no metrics

	inShutdown atomic.Bool // read on every request, without taking mu
	wg         sync.WaitGroup

	mu        sync.Mutex
	listeners map[*onceCloseListener]struct{}
	conns     map[*Conn]struct{}
	ctx       context.Context // base context of every request; canceled by Close
	cancel    context.CancelFunc
	done      chan struct{} // closed by Close or Shutdown, wakes Serve's back-off
}

// Conn is one client connection as a codec sees it. R and W are buffered for
// the connection's whole life; Buf and Scratch are scratch space that a codec
// reuses from request to request (reslice to zero, append, store back), so
// that a connection in steady state answers without allocating.
type Conn struct {
	R *bufio.Reader
	W *bufio.Writer
	// Buf holds the current request's payload, Scratch the reply being built.
	Buf, Scratch []byte

	nc    net.Conn
	srv   *Server
	log   *slog.Logger // carries protocol and remote address
	state atomic.Uint32
	names [4]string // recently seen map names, see internName
	// start is when the current (or last) request's first byte arrived;
	// deadlines are computed from it. The armed deadlines are remembered
	// so that they are set only when they must move (see deadlineConn).
	start                       time.Time
	readDeadline, writeDeadline time.Time
	stats                       *ConnStats // this connection's request counters; nil without metrics
}

// Elapsed returns the time since the current request's first byte, for
// the request duration metric.
func (c *Conn) Elapsed() time.Duration { return time.Since(c.start) }

// Connection states. A connection moves idle -> active when a request's
// first byte arrives and back when its reply is flushed; Shutdown closes only
// connections it can move from idle to closed, so it never cuts a reply.
const (
	stateIdle uint32 = iota
	stateActive
	stateClosed
)

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Logger returns the connection's logger, which already carries the protocol
// and the remote address.
func (c *Conn) Logger() *slog.Logger { return c.log }

// CountRequest records one answered request: result is one of the Result
// constants, d the time from the complete request to its reply.
func (c *Conn) CountRequest(result Result, d time.Duration) {
	if c.stats != nil {
		c.stats.Request(result, d)
	}
}

// rejectBadInput answers a request that could not be read. Bad input (err
// wrapping tooLong or malformed) gets a reply framed by frame, is counted
// and logged once, and closes the connection: after a framing error the
// stream cannot be trusted to resynchronise. I/O errors (timeout, EOF
// mid-request) have no one to answer and are returned as they are.
func (c *Conn) rejectBadInput(err, tooLong, malformed error, protocol string, frame func(dst []byte, reason string) []byte) error {
	var result Result
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
	_, werr := c.W.Write(c.Scratch)
	c.CountRequest(result, c.Elapsed())
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

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return DefaultMaxConns
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (s *Server) requestTimeout() time.Duration {
	if s.RequestTimeout > 0 {
		return s.RequestTimeout
	}
	return DefaultRequestTimeout
}

// initLocked sets up the server's state on first use. s.mu must be held.
func (s *Server) initLocked() {
	if s.done != nil {
		return
	}
	s.listeners = make(map[*onceCloseListener]struct{})
	s.conns = make(map[*Conn]struct{})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.done = make(chan struct{})
}

// Serve accepts connections on l and serves each in its own goroutine until
// Close or Shutdown, then returns ErrServerClosed. It closes l when it
// returns. Serve may be called with several listeners at once.
func (s *Server) Serve(l net.Listener) error {
	ol := &onceCloseListener{Listener: l}
	defer ol.Close()
	if !s.trackListener(ol, true) {
		return ErrServerClosed
	}
	defer s.trackListener(ol, false)

	var delay time.Duration
	for {
		nc, err := ol.Accept()
		if err != nil {
			if s.inShutdown.Load() {
				return ErrServerClosed
			}
			if !isTemporary(err) {
				return err
			}
			delay = nextAcceptDelay(delay)
			s.logger().Error("accept failed; retrying", "protocol", s.Protocol, "err", err, "delay", delay)
			if !s.sleep(delay) {
				return ErrServerClosed
			}
			continue
		}
		delay = 0
		if c := s.newConn(nc); c != nil {
			go c.serve()
		}
	}
}

// nextAcceptDelay doubles the back-off after a temporary Accept error.
func nextAcceptDelay(d time.Duration) time.Duration {
	d *= 2
	return min(max(d, minAcceptDelay), maxAcceptDelay)
}

// sleep waits for d, or until the server closes (then it returns false).
func (s *Server) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return false
	}
}

// isTemporary reports whether an Accept error may go away by itself (too
// many open files, a connection reset before it was accepted), in which case
// Serve backs off and retries instead of giving up.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) && t.Temporary() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) ||
		errors.Is(err, syscall.ENOMEM)
}

// trackListener adds or removes l. Adding fails once the server is closed.
func (s *Server) trackListener(l *onceCloseListener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initLocked()
	if !add {
		delete(s.listeners, l)
		return true
	}
	if s.inShutdown.Load() {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

// newConn registers an accepted connection, or closes it and returns nil if
// the server is over its connection cap or shutting down.
func (s *Server) newConn(nc net.Conn) *Conn {
	s.mu.Lock()
	if s.inShutdown.Load() {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	if len(s.conns) >= s.maxConns() {
		s.mu.Unlock()
		remote := nc.RemoteAddr().String()
		nc.Close()
		if s.Metrics != nil {
			s.Metrics.Rejected.Inc()
		}
		s.logger().Warn("connection refused: too many connections",
			"protocol", s.Protocol, "remote", remote, "max_conns", s.maxConns())
		return nil
	}
	c := &Conn{
		nc:    nc,
		srv:   s,
		log:   s.logger().With("protocol", s.Protocol, "remote", nc.RemoteAddr().String()),
		start: time.Now(), // the idle timeout runs from here until the first request
	}
	c.R = bufio.NewReader(deadlineConn{c})
	c.W = bufio.NewWriter(deadlineConn{c})
	s.conns[c] = struct{}{}
	s.wg.Add(1) // under mu, ordered before Shutdown's Wait by inShutdown
	s.mu.Unlock()
	if s.Metrics != nil {
		s.Metrics.Open.Inc()
		c.stats = s.Metrics.OpenConn()
	}
	return c
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

// errIdleClosed ends the loop of a connection that Shutdown closed while it
// was idle, or that went idle during a shutdown.
var errIdleClosed = errors.New("connection closed by shutdown")

// serveOne waits for the next request and serves it. It is the per-request
// path: no shared lock, no allocation, and deadlines are armed by
// deadlineConn only when a read or write may block.
func (c *Conn) serveOne() error {
	s := c.srv
	if _, err := c.R.Peek(1); err != nil {
		if c.state.Load() == stateClosed {
			return errIdleClosed
		}
		return idleError{err}
	}
	if !c.state.CompareAndSwap(stateIdle, stateActive) {
		return errIdleClosed // Shutdown got here first
	}
	c.start = time.Now()
	err := s.Codec.ServeRequest(s.ctx, c)
	// Flush even on error: a codec that closes on bad input has written
	// the reason.
	if ferr := c.W.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if !c.state.CompareAndSwap(stateActive, stateIdle) {
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
// once a second per connection keeps it off the per-request path.
const deadlineSlack = time.Second

// deadlineConn is the connection as its bufio reader and writer see it.
// bufio calls Read only when it has no buffered bytes left, so a request
// that arrived whole costs no deadline at all; a read while idle is bounded
// by IdleTimeout from the last request, a read in the middle of a request
// and every write by RequestTimeout from the request's first byte.
type deadlineConn struct{ c *Conn }

func (d deadlineConn) Read(p []byte) (int, error) {
	c := d.c
	var want time.Time
	if c.state.Load() == stateActive {
		want = c.start.Add(c.srv.requestTimeout())
	} else {
		want = c.start.Add(c.srv.idleTimeout())
	}
	if !armed(c.readDeadline, want) {
		c.nc.SetReadDeadline(want)
		c.readDeadline = want
	}
	return c.nc.Read(p)
}

func (d deadlineConn) Write(p []byte) (int, error) {
	c := d.c
	want := c.start.Add(c.srv.requestTimeout())
	if !armed(c.writeDeadline, want) {
		c.nc.SetWriteDeadline(want)
		c.writeDeadline = want
	}
	return c.nc.Write(p)
}

// armed reports whether the deadline cur may stand for want: not later,
// and earlier by less than deadlineSlack.
func armed(cur, want time.Time) bool {
	return !cur.After(want) && want.Sub(cur) < deadlineSlack
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
	delete(s.conns, c)
	s.mu.Unlock()
	if s.Metrics != nil {
		s.Metrics.Open.Dec()
		s.Metrics.CloseConn(c.stats)
	}
	s.wg.Done()
}

// beginShutdown stops new listeners and connections. It reports whether the
// server was already shutting down.
func (s *Server) beginShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initLocked()
	if s.inShutdown.Load() {
		return true
	}
	s.inShutdown.Store(true)
	close(s.done)
	return false
}

// closeListeners closes every listener and returns the first error.
func (s *Server) closeListeners() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for l := range s.listeners {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// Close closes the listeners and every connection now, cutting requests in
// flight, and cancels the context their lookups run under. Serve returns
// ErrServerClosed. Close does not wait for the connection goroutines.
func (s *Server) Close() error {
	s.beginShutdown()
	err := s.closeListeners()
	s.mu.Lock()
	s.cancel()
	for c := range s.conns {
		c.state.Store(stateClosed)
		c.nc.Close()
	}
	s.mu.Unlock()
	return err
}

// Shutdown stops accepting, closes idle connections, lets requests in flight
// finish and their replies be written, and returns once every connection is
// gone. If ctx ends first, it closes the rest as Close does and returns
// ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	err := s.closeListeners()
	s.closeIdle()

	gone := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(gone)
	}()
	select {
	case <-gone:
		return err
	case <-ctx.Done():
		// Closed connections and a canceled context end the remaining
		// goroutines soon; as net/http, do not wait for a lookup that
		// ignores its context.
		s.Close()
		return ctx.Err()
	}
}

// closeIdle closes the connections waiting for a request. Active ones close
// themselves once their reply is written (serveOne checks inShutdown).
func (s *Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			c.nc.Close()
		}
	}
}
