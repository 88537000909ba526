package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
)

// wireLookup is the fake TableLookup of the wire protocol tests. Keys ending
// in a known suffix pick the outcome; other keys are found.
type wireLookup func(ctx context.Context, mapName, key string) Answer

func (f wireLookup) LookupTable(ctx context.Context, mapName string, key []byte) Answer {
	return f(ctx, mapName, string(key))
}

// fakeAnswers answers the default map like the engine would, and refuses
// other maps the way the engine does (the codecs pass every name through).
func fakeAnswers(_ context.Context, mapName, key string) Answer {
	if mapName != "tlspolicy" {
		return Answer{Status: StatusPerm, Text: "unknown map " + mapName}
	}
	switch key {
	case "notfound.test":
		return Answer{Status: StatusNotFound, Text: "ignored"}
	case "temp.test":
		return Answer{Status: StatusTemp, Text: "probe failed"}
	case "perm.test":
		return Answer{Status: StatusPerm, Text: "bad key"}
	case "panic.test":
		panic("lookup blew up")
	}
	return Answer{Status: StatusOK, Text: "verify match=" + key, Label: "verify"}
}

// wireServer is a Server serving a loopback listener for one test.
type wireServer struct {
	*Server
	addr   string
	log    *testlog.Buffer
	served chan error
	once   sync.Once
	err    error
}

// startWireServer serves codec on 127.0.0.1 until the test ends; configure
// may set the Server's fields before it starts.
func startWireServer(t testing.TB, codec Codec, configure func(*Server)) *wireServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveWire(t, l, codec, configure)
}

func serveWire(t testing.TB, l net.Listener, codec Codec, configure func(*Server)) *wireServer {
	t.Helper()
	ws := &wireServer{
		Server: &Server{Protocol: "test", Codec: codec},
		addr:   l.Addr().String(),
		log:    &testlog.Buffer{},
		served: make(chan error, 1),
	}
	ws.Logger = ws.log.Logger()
	if configure != nil {
		configure(ws.Server)
	}
	go func() { ws.served <- ws.Serve(l) }()
	t.Cleanup(func() {
		ws.Close()
		if err := ws.wait(); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		ws.wg.Wait() // no connection goroutine outlives the test
		if t.Failed() {
			t.Logf("server log:\n%s", ws.log)
		}
	})
	return ws
}

// wait returns what Serve returned, waiting for it.
func (ws *wireServer) wait() error {
	ws.once.Do(func() { ws.err = <-ws.served })
	return ws.err
}

// wireClient is a test peer: it writes raw bytes and reads replies.
type wireClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialWire(t testing.TB, network, addr string) *wireClient {
	t.Helper()
	conn, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A generous deadline: a test that hangs fails instead.
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return &wireClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *wireClient) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// readNetstring reads one reply netstring.
func (c *wireClient) readNetstring() string {
	c.t.Helper()
	p, err := readNetstring(c.r, nil, MaxNetstringLen)
	if err != nil {
		c.t.Fatalf("reading a reply netstring: %v", err)
	}
	return string(p)
}

// readLine reads one reply line, keeping its '\n'.
func (c *wireClient) readLine() string {
	c.t.Helper()
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading a reply line: %v (got %q)", err, s)
	}
	return s
}

// expectClosed checks that the server closed the connection with nothing
// more to read.
func (c *wireClient) expectClosed() {
	c.t.Helper()
	b, err := c.r.ReadByte()
	if err == nil {
		c.t.Fatalf("read %q, want the connection closed", b)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("read error %v, want EOF (connection closed by the server)", err)
	}
}

// query sends one socketmap request and returns the reply.
func (c *wireClient) query(mapName, key string) string {
	c.t.Helper()
	c.send(string(appendNetstring(nil, mapName, " ", key)))
	return c.readNetstring()
}

// newTestMetrics returns the collectors of one protocol on a fresh registry.
func newTestMetrics() *ProtocolMetrics {
	return NewMetrics(prometheus.NewRegistry()).Protocol("test")
}

// metricValue reads a counter or gauge.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	t.Fatalf("metric %v is neither a counter nor a gauge", m.Desc())
	return 0
}

// newTestConn builds a Conn over r and w without a network or a running
// server, for driving a codec directly (fuzzing, unit tests).
func newTestConn(r io.Reader, w io.Writer) *Conn {
	return &Conn{
		R:   bufio.NewReader(r),
		W:   bufio.NewWriter(w),
		srv: &Server{Protocol: "test"},
		log: slog.New(slog.DiscardHandler),
	}
}

func TestServerServesManyRequestsPerConnection(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)
	c := dialWire(t, "tcp", ws.addr)
	for _, key := range []string{"a.test", "b.test", "c.test"} {
		if got, want := c.query("tlspolicy", key), "OK verify match="+key; got != want {
			t.Errorf("reply %q, want %q", got, want)
		}
	}
}

func TestServerCleanEOFIsQuiet(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)
	c := dialWire(t, "tcp", ws.addr)
	c.query("tlspolicy", "a.test")
	c.conn.Close()
	// Shutdown returns once the connection is gone.
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if log := ws.log.String(); strings.Contains(log, "level=WARN") || strings.Contains(log, "level=ERROR") {
		t.Errorf("a clean close was logged as a problem:\n%s", log)
	}
}

func TestServerIdleTimeout(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.IdleTimeout = 50 * time.Millisecond
	})
	c := dialWire(t, "tcp", ws.addr)
	c.query("tlspolicy", "a.test") // the timeout restarts after each request
	c.expectClosed()
}

func TestServerRequestTimeout(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.RequestTimeout = 50 * time.Millisecond
	})
	c := dialWire(t, "tcp", ws.addr)
	c.send("20:tlspolicy exa") // a slow writer: the rest never comes
	c.expectClosed()
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if log := ws.log.String(); !strings.Contains(log, "request timed out") {
		t.Errorf("timeout not logged:\n%s", log)
	}
}

func TestServerIdleTimeoutCountsFromLastRequest(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.IdleTimeout = time.Second
	})
	c := dialWire(t, "tcp", ws.addr)
	// Requests 600 ms apart: each comes within the idle timeout of the one
	// before, though the last comes later than the timeout after the first
	// (and after accept): each request restarts the count.
	for i, key := range []string{"a.test", "b.test", "c.test"} {
		if i > 0 {
			time.Sleep(600 * time.Millisecond)
		}
		if got, want := c.query("tlspolicy", key), "OK verify match="+key; got != want {
			t.Fatalf("request %d: reply %q, want %q", i+1, got, want)
		}
	}
	last := time.Now()
	c.expectClosed()
	if idle := time.Since(last); idle < 900*time.Millisecond {
		t.Errorf("closed %v after the last request, want no sooner than the idle timeout (1s)", idle)
	}
}

// TestServerRequestDeadlineHoldsAgainstTrickle sends a request one byte
// every 100 ms: each gap is far below the request timeout, the whole
// request far above it. A deadline that moved with each byte would let the
// request through; the request deadline counts from its first byte.
func TestServerRequestDeadlineHoldsAgainstTrickle(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.RequestTimeout = 500 * time.Millisecond
	})
	c := dialWire(t, "tcp", ws.addr)
	req := appendNetstring(nil, "tlspolicy a-rather-long-trickled-key.example")

	closed := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c.r) // until the server closes
		closed <- b
	}()
	first := time.Now()
	sent := 0
	var reply []byte
	done := false
	for ; sent < len(req) && !done; sent++ {
		if _, err := c.conn.Write(req[sent : sent+1]); err != nil {
			break
		}
		select {
		case reply = <-closed:
			done = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !done {
		select {
		case reply = <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("the connection is still open 5s after the whole request was sent")
		}
	}
	if len(reply) > 0 {
		t.Errorf("the trickled request was answered %q, want the connection closed at its deadline", reply)
	}
	if sent == len(req) {
		t.Errorf("all %d bytes of the request were sent over %v before the connection closed; want it closed %v after the first byte",
			len(req), time.Since(first).Round(time.Millisecond), ws.RequestTimeout)
	}
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if log := ws.log.String(); !strings.Contains(log, "request timed out") {
		t.Errorf("timeout not logged:\n%s", log)
	}
}

func TestServerFullClosesIdleConnection(t *testing.T) {
	m := newTestMetrics()
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.MaxConns = 1
		s.Metrics = m
	})
	first := dialWire(t, "tcp", ws.addr)
	first.query("tlspolicy", "a.test") // the first connection is now tracked
	// The reply reaches the client a moment before the server marks the
	// connection idle again; a newcomer seeing it mid-request would count
	// it busy until its deadline and be refused.
	waitAllIdle(t, ws.Server)
	if got := metricValue(t, m.Open); got != 1 {
		t.Errorf("open connections = %v, want 1", got)
	}

	second := dialWire(t, "tcp", ws.addr)
	first.expectClosed()
	if got, want := second.query("tlspolicy", "b.test"), "OK verify match=b.test"; got != want {
		t.Errorf("new connection on a full listener: %q, want %q", got, want)
	}
	if got := metricValue(t, m.Evicted); got != 1 {
		t.Errorf("evicted connections = %v, want 1", got)
	}
	if got := metricValue(t, m.Rejected); got != 0 {
		t.Errorf("rejected connections = %v, want 0", got)
	}
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkLogLine(t, ws.log.String(), "closed an idle connection to admit a new one",
		"protocol", "remote", "client", "idle", "new_remote", "max_connections")
}

func TestServerFullRefusesWhenNoneIdle(t *testing.T) {
	m := newTestMetrics()
	lookup := newBlockingLookup()
	ws := startWireServer(t, NewSocketmapCodec(lookup), func(s *Server) {
		s.MaxConns = 1
		s.Metrics = m
	})
	busy := dialWire(t, "tcp", ws.addr)
	busy.send(string(appendNetstring(nil, "tlspolicy stuck.test")))
	<-lookup.entered // mid-request: not to be cut

	second := dialWire(t, "tcp", ws.addr)
	second.expectClosed()
	if got := metricValue(t, m.Rejected); got != 1 {
		t.Errorf("rejected connections = %v, want 1", got)
	}
	if got := metricValue(t, m.Evicted); got != 0 {
		t.Errorf("evicted connections = %v, want 0", got)
	}
	close(lookup.release)
	if got, want := busy.readNetstring(), "OK encrypt"; got != want {
		t.Errorf("the busy connection's reply: %q, want %q", got, want)
	}
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkLogLine(t, ws.log.String(), "connection refused: listener full and no connection idle",
		"protocol", "remote", "client", "max_connections")
}

func TestServerFullClosesLongestIdle(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.MaxConns = 3
	})
	a := dialWire(t, "tcp", ws.addr)
	b := dialWire(t, "tcp", ws.addr)
	c := dialWire(t, "tcp", ws.addr)
	for _, conn := range []*wireClient{a, b, c, a} { // b is now the longest idle
		conn.query("tlspolicy", "x.test")
		time.Sleep(2 * time.Millisecond) // distinct request times
	}
	waitAllIdle(t, ws.Server)
	d := dialWire(t, "tcp", ws.addr)
	b.expectClosed()
	for name, conn := range map[string]*wireClient{"a": a, "c": c, "d": d} {
		if got, want := conn.query("tlspolicy", "y.test"), "OK verify match=y.test"; got != want {
			t.Errorf("connection %s: %q, want %q", name, got, want)
		}
	}
}

// checkLogLine checks that the log has a line with msg, and that each of
// attrs appears in it exactly once.
func checkLogLine(t *testing.T, log, msg string, attrs ...string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "msg=\""+msg) {
			continue
		}
		for _, a := range attrs {
			if n := strings.Count(line, " "+a+"="); n != 1 {
				t.Errorf("attribute %s appears %d times in %q, want once", a, n, line)
			}
		}
		return
	}
	t.Errorf("no log line %q in:\n%s", msg, log)
}

func TestServerPanicClosesOnlyThatConnection(t *testing.T) {
	m := newTestMetrics()
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.Metrics = m
	})
	healthy := dialWire(t, "tcp", ws.addr)
	healthy.query("tlspolicy", "a.test")

	doomed := dialWire(t, "tcp", ws.addr)
	doomed.send(string(appendNetstring(nil, "tlspolicy panic.test")))
	doomed.expectClosed()

	if got, want := healthy.query("tlspolicy", "b.test"), "OK verify match=b.test"; got != want {
		t.Errorf("other connection after the panic: %q, want %q", got, want)
	}
	if got := metricValue(t, m.Panics); got != 1 {
		t.Errorf("panics = %v, want 1", got)
	}
	log := ws.log.String()
	for _, want := range []string{"level=ERROR", "lookup blew up", "goroutine", "fakeAnswers"} {
		if !strings.Contains(log, want) {
			t.Errorf("panic log lacks %q:\n%s", want, log)
		}
	}
}

// blockingLookup holds lookups of keys starting with "stuck" until release
// is closed, or fails them when their context is canceled; entered receives
// each such key as its lookup begins. Other keys are answered at once.
type blockingLookup struct {
	entered  chan string
	release  chan struct{}
	canceled chan struct{}
}

func newBlockingLookup() *blockingLookup {
	return &blockingLookup{
		entered:  make(chan string, 10),
		release:  make(chan struct{}),
		canceled: make(chan struct{}, 10),
	}
}

func (b *blockingLookup) LookupTable(ctx context.Context, mapName string, keyBytes []byte) Answer {
	key := string(keyBytes)
	if !strings.HasPrefix(key, "stuck") {
		return Answer{Status: StatusOK, Text: "may"}
	}
	b.entered <- key
	select {
	case <-b.release:
		return Answer{Status: StatusOK, Text: "encrypt"}
	case <-ctx.Done():
		b.canceled <- struct{}{}
		return Answer{Status: StatusTemp, Text: "canceled"}
	}
}

func TestServerShutdownDrainsInFlightRequest(t *testing.T) {
	lookup := newBlockingLookup()
	ws := startWireServer(t, NewSocketmapCodec(lookup), nil)
	idle := dialWire(t, "tcp", ws.addr)
	busy := dialWire(t, "tcp", ws.addr)
	idle.query("tlspolicy", "idle.test")
	busy.send(string(appendNetstring(nil, "tlspolicy stuck.test")))
	<-lookup.entered // the request is in flight

	shut := make(chan error, 1)
	go func() { shut <- ws.Shutdown(context.Background()) }()

	// The idle connection is closed at once, the listener too...
	idle.expectClosed()
	if err := ws.wait(); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	if c, err := net.Dial("tcp", ws.addr); err == nil {
		c.Close()
		t.Error("the listener still accepts after Shutdown")
	}
	// ...but Shutdown waits for the busy one's reply.
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}

	close(lookup.release)
	if got, want := busy.readNetstring(), "OK encrypt"; got != want {
		t.Errorf("in-flight reply %q, want %q", got, want)
	}
	busy.expectClosed()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestServerShutdownDeadlineForcesClose(t *testing.T) {
	lookup := newBlockingLookup()
	ws := startWireServer(t, NewSocketmapCodec(lookup), nil)
	c := dialWire(t, "tcp", ws.addr)
	c.send(string(appendNetstring(nil, "tlspolicy stuck.test")))
	<-lookup.entered

	ctx, cancel := context.WithCancel(context.Background())
	shut := make(chan error, 1)
	go func() { shut <- ws.Shutdown(ctx) }()
	cancel()
	if err := <-shut; !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown returned %v, want context.Canceled", err)
	}
	<-lookup.canceled // the lookup's context was canceled
	c.expectClosed()
}

func TestServerClose(t *testing.T) {
	lookup := newBlockingLookup()
	ws := startWireServer(t, NewSocketmapCodec(lookup), nil)
	c := dialWire(t, "tcp", ws.addr)
	c.send(string(appendNetstring(nil, "tlspolicy stuck.test")))
	<-lookup.entered

	if err := ws.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	c.expectClosed()
	<-lookup.canceled
	if err := ws.wait(); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close returned %v, want ErrServerClosed", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after Close left its listener open (Accept: %v)", err)
	}
}

// flakyListener fails Accept with the queued errors, then hands out the
// queued connections, then blocks until closed.
type flakyListener struct {
	errs   chan error
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *flakyListener) Accept() (net.Conn, error) {
	select {
	case err := <-l.errs:
		return nil, err
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *flakyListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func TestServerAcceptBacksOffOnTemporaryErrors(t *testing.T) {
	l := &flakyListener{errs: make(chan error, 3), conns: make(chan net.Conn, 1), closed: make(chan struct{})}
	for range 3 {
		l.errs <- &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept", syscall.EMFILE)}
	}
	server, client := net.Pipe()
	l.conns <- server
	ws := serveWire(t, l, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)

	c := &wireClient{t: t, conn: client, r: bufio.NewReader(client)}
	t.Cleanup(func() { client.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if got, want := c.query("tlspolicy", "a.test"), "OK verify match=a.test"; got != want {
		t.Errorf("reply after accept errors: %q, want %q", got, want)
	}
	if n := strings.Count(ws.log.String(), "accept failed"); n != 3 {
		t.Errorf("%d accept failures logged, want 3:\n%s", n, ws.log)
	}
}

func TestServerReturnsPermanentAcceptError(t *testing.T) {
	l := &flakyListener{errs: make(chan error, 1), closed: make(chan struct{})}
	fatal := errors.New("listener broken")
	l.errs <- fatal
	s := &Server{Protocol: "test", Codec: NewSocketmapCodec(wireLookup(fakeAnswers)), Logger: slog.New(slog.DiscardHandler)}
	if err := s.Serve(l); !errors.Is(err, fatal) {
		t.Errorf("Serve returned %v, want %v", err, fatal)
	}
}

func TestNextAcceptDelay(t *testing.T) {
	var d time.Duration
	var got []time.Duration
	for range 10 {
		d = nextAcceptDelay(d)
		got = append(got, d)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
}

func TestListenTCP(t *testing.T) {
	l, err := Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Addr().Network() != "tcp" {
		t.Errorf("network %q, want tcp", l.Addr().Network())
	}
}

func TestListenUnix(t *testing.T) {
	for _, tc := range []struct {
		mode, want os.FileMode
	}{
		{0, 0o666},
		{0o660, 0o660},
	} {
		path := filepath.Join(t.TempDir(), "policy.sock")
		l, err := Listen("unix:"+path, tc.mode)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tc.want {
			t.Errorf("mode %v, want a socket with %v", fi.Mode(), tc.want)
		}

		ws := serveWire(t, l, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)
		c := dialWire(t, "unix", path)
		if got, want := c.query("tlspolicy", "a.test"), "OK verify match=a.test"; got != want {
			t.Errorf("reply over the socket: %q, want %q", got, want)
		}
		c.conn.Close()
		if err := ws.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket file left after close: %v", err)
		}
	}
}

func TestListenUnixRemovesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.sock")
	// A daemon that died leaves its socket file behind.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("setting up the stale socket: %v", err)
	}

	l, err := Listen("unix:"+path, 0o600)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()
}

func TestListenUnixRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.sock")
	live, err := Listen("unix:"+path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if l, err := Listen("unix:"+path, 0); err == nil {
		l.Close()
		t.Fatal("Listen took over a socket in use")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("unclear error: %v", err)
	}
	// The live socket still works.
	go func() {
		if c, err := live.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket was disturbed: %v", err)
	}
	c.Close()
}

func TestListenUnixRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen("unix:"+path, 0); err == nil {
		l.Close()
		t.Fatal("Listen replaced a regular file")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("unclear error: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Errorf("the file was disturbed: %q, %v", b, err)
	}
	if _, err := Listen("unix:", 0); err == nil {
		t.Error("Listen accepted an empty socket path")
	}
}

// runAsClient runs this test binary as a client of the unix socket at path
// under user id uid, holding n idle connections, until the test ends. The
// binary is copied next to the socket, into dir, for the user to run it.
func runAsClient(t *testing.T, dir, path string, uid uint32, n int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), helperDialEnv+"="+path, helperConnsEnv+"="+strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("the client running as uid %d: %v", uid, err)
		}
	})
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("the client running as uid %d: %q, %v", uid, line, err)
	}
}

// TestServerUnixShareByUser: over a unix socket, a client is a user. A
// user filling the listener with idle connections loses its own when
// another user connects, even though the other user's connection has been
// idle longer.
func TestServerUnixShareByUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running a client as another user needs root")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "wire-share-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policy.sock")
	l, err := Listen("unix:"+path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	m := newTestMetrics()
	ws := serveWire(t, l, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) {
		s.MaxConns = 4
		s.Metrics = m
	})

	mine := dialWire(t, "unix", path)
	mine.query("tlspolicy", "a.test") // tracked, and idle from now on: the longest of all
	runAsClient(t, dir, path, nobody, 3)
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, m.Open) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%v connections open, want 4", metricValue(t, m.Open))
		}
		time.Sleep(time.Millisecond)
	}

	newer := dialWire(t, "unix", path)
	for name, c := range map[string]*wireClient{"new": newer, "longest idle": mine} {
		if got, want := c.query("tlspolicy", "b.test"), "OK verify match=b.test"; got != want {
			t.Errorf("root's %s connection: %q, want %q", name, got, want)
		}
	}
	if got := metricValue(t, m.Evicted); got != 1 {
		t.Errorf("evicted connections = %v, want 1", got)
	}
	newer.conn.Close()
	mine.conn.Close()
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if log, want := ws.log.String(), fmt.Sprintf("client=uid:%d ", nobody); !strings.Contains(log, want) {
		t.Errorf("no eviction of a connection of uid %d (%q) logged:\n%s", nobody, want, log)
	}
}

// waitAllIdle waits until every connection of s is between requests.
func waitAllIdle(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		idle := true
		s.mu.Lock()
		s.conns.each(func(c *Conn) { idle = idle && wordState(c.state.Load()) == stateIdle })
		s.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a connection is still mid-request after 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
