package wire

import (
	"container/heap"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"time"
)

// connTable holds a server's open connections, grouped by client, and
// chooses which one to close when the listener is full. The Server's mu
// guards it; the request path never touches it.
//
// The choice (evict): the longest-idle connection of the client that holds
// the most connections. A client flooding the listener with idle
// connections thus loses its own, and a client that holds fewer than the
// newcomer's client would with the newcomer never loses one to it. If the
// biggest client has nothing idle, the next biggest is tried, down to the
// newcomer's own client; if none of them has an idle connection, the
// newcomer is refused. Among clients of the same size, the longest-idle
// connection of any of them goes.
//
// A connection is idle since its last request began (or since accept), as
// its state word says; but once the table has seen it mid-request, it
// counts as busy until that request's deadline, by which time the request
// has ended one way or another. So a listener full of busy connections
// costs one look at each per request, not a look at every one per
// newcomer refused; the price is that a connection whose request ended
// early may be passed over until its deadline.
//
// Connections begin and end requests without taking a lock, so the table
// cannot keep them ordered. Instead each client keeps a min-heap keyed by
// idle time as the table last reckoned it. That time only grows, so a key
// is a lower bound: once the top's key is current, no connection of the
// client has been idle longer. A stale top is re-keyed and sifted down;
// each re-keying follows a request begun since the last look, so the work
// is O(log n) per request, done on the accept path.
type connTable struct {
	clients map[string]*client
	byCount []*client // sorted by number of connections, most first
	n       int       // connections in the table
	// requestTimeout bounds a request, from its first byte to its reply.
	requestTimeout time.Duration
	busy           []*Conn // scratch space of oldestIdle
}

// client is one client's connections (see clientOf for who is a client).
type client struct {
	key   string
	pos   int      // index in connTable.byCount
	conns connHeap // every connection, idle or not
}

// add puts a new connection in the table, under its client.
func (t *connTable) add(c *Conn) {
	cl := t.clients[c.key]
	if cl == nil {
		cl = &client{key: c.key, pos: len(t.byCount)}
		t.clients[c.key] = cl
		t.byCount = append(t.byCount, cl)
	}
	// Moved first among the clients with as many connections, cl may
	// then grow by one without unsorting byCount.
	t.swap(cl.pos, t.firstWithAtMost(len(cl.conns)))
	c.client = cl
	c.idleSince = wordSince(c.state.Load())
	heap.Push(&cl.conns, c)
	t.n++
}

// remove takes a connection out of the table; removing it again does
// nothing.
func (t *connTable) remove(c *Conn) {
	cl := c.client
	if cl == nil {
		return
	}
	// Moved last among the clients with as many connections, cl may then
	// shrink by one without unsorting byCount.
	last := t.firstWithAtMost(len(cl.conns)-1) - 1
	t.swap(cl.pos, last)
	heap.Remove(&cl.conns, c.heapIndex)
	c.client = nil
	t.n--
	if len(cl.conns) == 0 { // last of all: no client has no connections
		t.byCount[last] = nil
		t.byCount = t.byCount[:last]
		delete(t.clients, cl.key)
	}
}

// firstWithAtMost returns the index in byCount of the first client with at
// most n connections (len(byCount) if there is none).
func (t *connTable) firstWithAtMost(n int) int {
	return sort.Search(len(t.byCount), func(i int) bool { return len(t.byCount[i].conns) <= n })
}

func (t *connTable) swap(i, j int) {
	t.byCount[i], t.byCount[j] = t.byCount[j], t.byCount[i]
	t.byCount[i].pos = i
	t.byCount[j].pos = j
}

// evict chooses the connection to close so that a new connection of client
// key fits, moves it to closed and removes it from the table; the caller
// closes it. It returns nil if no connection may go. since is when the
// victim's idleness began; since and now are on the server's clock.
func (t *connTable) evict(key string, now time.Duration) (victim *Conn, since time.Duration) {
	for {
		c, w := t.choose(key, now)
		if c == nil {
			return nil, 0
		}
		if c.state.CompareAndSwap(w, stateClosed) {
			t.remove(c)
			return c, c.idleSince
		}
		// A request began on c since it was chosen: choose again.
	}
}

// choose returns the victim for a newcomer of client key, and the state
// word it was idle in: among the clients that hold at least as many
// connections as the newcomer's would with it, the longest-idle connection
// of the biggest that has one; failing that, the newcomer's own client's
// longest-idle.
func (t *connTable) choose(key string, now time.Duration) (*Conn, uint64) {
	own := t.clients[key]
	need := 1
	if own != nil {
		need = len(own.conns) + 1
	}
	var best *Conn
	var bestWord uint64
	for _, cl := range t.byCount {
		n := len(cl.conns)
		if n < need || best != nil && n < len(best.client.conns) {
			break
		}
		if c, w := t.oldestIdle(cl, now); c != nil && (best == nil || c.idleSince < best.idleSince) {
			best, bestWord = c, w
		}
	}
	if best == nil && own != nil {
		best, bestWord = t.oldestIdle(own, now)
	}
	return best, bestWord
}

// oldestIdle returns cl's longest-idle connection and the state word it is
// idle in, or nil if none of cl's connections is idle. It leaves the
// connection's key current (idleSince).
func (t *connTable) oldestIdle(cl *client, now time.Duration) (*Conn, uint64) {
	// Connections closing themselves, and requests past their deadline
	// (about to be closed), are set aside while looking, and put back
	// before returning.
	aside := t.busy[:0]
	defer func() {
		for _, c := range aside {
			heap.Push(&cl.conns, c)
		}
		clear(aside)
		t.busy = aside[:0]
	}()
	for len(cl.conns) > 0 {
		c := cl.conns[0]
		w := c.state.Load()
		if wordState(w) == stateClosed {
			aside = append(aside, heap.Pop(&cl.conns).(*Conn))
			continue
		}
		if wordState(w) == stateActive {
			c.busyUntil = max(c.busyUntil, wordSince(w)+t.requestTimeout)
		}
		since := max(wordSince(w), c.busyUntil)
		switch {
		case since != c.idleSince:
			c.idleSince = since
			heap.Fix(&cl.conns, 0)
		case since > now:
			// Busy, or counted busy until its request's deadline; and
			// so is every connection below it.
			return nil, 0
		case wordState(w) == stateIdle:
			return c, w
		default:
			aside = append(aside, heap.Pop(&cl.conns).(*Conn))
		}
	}
	return nil, 0
}

// each calls f for every connection in the table.
func (t *connTable) each(f func(*Conn)) {
	for _, cl := range t.byCount {
		for _, c := range cl.conns {
			f(c)
		}
	}
}

// connHeap orders a client's connections by idleSince, oldest first
// (container/heap).
type connHeap []*Conn

func (h connHeap) Len() int           { return len(h) }
func (h connHeap) Less(i, j int) bool { return h[i].idleSince < h[j].idleSince }
func (h connHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex = i
	h[j].heapIndex = j
}

func (h *connHeap) Push(x any) {
	c := x.(*Conn)
	c.heapIndex = len(*h)
	*h = append(*h, c)
}

func (h *connHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.heapIndex = -1
	return c
}

// clientOf names the client a connection belongs to, for the per-client
// share of a full listener. A client should be a principal that cannot
// multiply itself cheaply, or the share means nothing:
//
//   - TCP from another host: its IP address. An IPv6 host usually has a
//     whole /64 to pick source addresses from, so IPv6 counts by /64.
//   - TCP over loopback: one client for all of 127.0.0.0/8 and ::1. Any
//     local process may bind any address of 127.0.0.0/8, so telling them
//     apart would let one process pose as millions of clients, and make
//     the busiest real client (Postfix, on 127.0.0.1) the one that loses
//     its connections. Local processes are told apart over a unix socket.
//   - A unix socket: the peer's user id (SO_PEERCRED, which the kernel
//     records at connect and the peer cannot forge). Not the process id:
//     a process forks as many as it likes, while every Postfix smtp(8)
//     process runs as the same user, and another user cannot become it.
//     Where the credentials cannot be read, all peers are one client.
func clientOf(nc net.Conn) string {
	switch a := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		return ipClient(a.AddrPort().Addr())
	case *net.UnixAddr:
		if uid, ok := peerUID(nc); ok {
			return "uid:" + strconv.FormatUint(uint64(uid), 10)
		}
		return "unix"
	}
	return nc.RemoteAddr().Network()
}

// ipClient is the client of a TCP peer at ip (see clientOf).
func ipClient(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.Is6():
		p, _ := ip.Prefix(64) // cannot fail: an IPv6 address without a zone
		return p.String()
	}
	return ip.String()
}
