package wire

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the Server fields left zero.
const (
	DefaultMaxConns       = 1000
	DefaultIdleTimeout    = 60 * time.Second
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
	// MaxConns caps open connections (0: DefaultMaxConns), so that a peer
	// that opens too many cannot starve the daemon of file descriptors.
	// At the cap, a new connection is admitted by closing an idle one
	// (counted in Metrics.Evicted): the longest-idle connection of the
	// client holding the most (see connTable), so that idle connections,
	// however many, never lock a client out. Only when every connection
	// that could go is in the middle of a request is the new one closed
	// at once (counted in Metrics.Rejected).
	MaxConns int
	// IdleTimeout is how long a connection may wait for the next request's
	// first byte, counted from the last request's first byte or from
	// accept (0: DefaultIdleTimeout). Postfix closes its own idle
	// connections sooner; this reclaims those of vanished peers.
	IdleTimeout time.Duration
	// RequestTimeout bounds reading the rest of one request, the lookup and
	// writing the reply (0: DefaultRequestTimeout). Keep it above the
	// engine's longest wait for a probe, or replies will miss their deadline.
	RequestTimeout time.Duration
	Logger         *slog.Logger     // nil: slog.Default()
	Metrics        *ProtocolMetrics // nil: no metrics

	inShutdown atomic.Bool // read on every request, without taking mu
	wg         sync.WaitGroup

	// epoch is the origin of the server's clock: connections keep times
	// as offsets from it, which cost one monotonic clock read to take
	// (time.Now reads the wall clock too) and an integer compare to check.
	epoch time.Time

	mu        sync.Mutex
	listeners map[*onceCloseListener]struct{}
	conns     connTable
	ctx       context.Context // base context of every request; canceled by Close
	cancel    context.CancelFunc
	done      chan struct{} // closed by Close or Shutdown, wakes Serve's back-off
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// The settings with their defaults for zero fields (the fields are never
// negative: they are set by the daemon from validated settings).
func (s *Server) maxConns() int              { return cmp.Or(s.MaxConns, DefaultMaxConns) }
func (s *Server) idleTimeout() time.Duration { return cmp.Or(s.IdleTimeout, DefaultIdleTimeout) }
func (s *Server) requestTimeout() time.Duration {
	return cmp.Or(s.RequestTimeout, DefaultRequestTimeout)
}

// clock returns the time on the server's monotonic clock.
func (s *Server) clock() time.Duration { return time.Since(s.epoch) }

// initLocked sets up the server's state on first use. s.mu must be held.
func (s *Server) initLocked() {
	if s.done != nil {
		return
	}
	s.epoch = time.Now()
	s.listeners = make(map[*onceCloseListener]struct{})
	s.conns = connTable{clients: make(map[string]*client), requestTimeout: s.requestTimeout()}
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
	// Connections first: a lookup that returns when its context is
	// canceled must find its connection closed, not slip a reply out.
	s.conns.each(func(c *Conn) {
		c.state.Store(stateClosed)
		c.nc.Close()
	})
	s.cancel()
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
	s.conns.each(func(c *Conn) {
		if c.claimIdle() {
			c.nc.Close()
		}
	})
}
