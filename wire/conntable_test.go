package wire

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// tableConn is a connection as the table sees it: a client and a state
// word, no network.
func tableConn(key string, state uint64, since time.Duration) *Conn {
	c := &Conn{key: key}
	c.state.Store(stateWord(state, since))
	return c
}

// testRequestTimeout is the request timeout of the tables in these tests,
// whose clocks count from 0 in steps of 1.
const testRequestTimeout = 100

// tableWith returns a table holding conns, added in order.
func tableWith(conns ...*Conn) *connTable {
	t := &connTable{clients: make(map[string]*client), requestTimeout: testRequestTimeout}
	for _, c := range conns {
		t.add(c)
	}
	return t
}

// serve marks c as having served a request that began at since, without
// the table knowing, as a connection's goroutine does.
func serve(c *Conn, since time.Duration) { c.state.Store(stateWord(stateIdle, since)) }

func TestConnTableEvictsLongestIdle(t *testing.T) {
	a := tableConn("loopback", stateIdle, 1)
	b := tableConn("loopback", stateIdle, 2)
	c := tableConn("loopback", stateIdle, 3)
	tab := tableWith(a, b, c)
	serve(a, 10) // a's key in the table is now stale: b is the longest idle

	victim, since := tab.evict("loopback", 20)
	if victim != b || since != 2 {
		t.Fatalf("evicted %v idle since %d, want b idle since 2", name(victim, a, b, c), since)
	}
	if wordState(b.state.Load()) != stateClosed {
		t.Error("the victim was not moved to closed")
	}
	if tab.n != 2 || b.client != nil {
		t.Errorf("the victim is still in the table (n = %d)", tab.n)
	}
	if victim, _ := tab.evict("loopback", 20); victim != c {
		t.Errorf("then evicted %v, want c", name(victim, a, b, c))
	}
	checkTable(t, tab)
}

func TestConnTableNeverEvictsMidRequest(t *testing.T) {
	a := tableConn("loopback", stateActive, 1)
	b := tableConn("loopback", stateIdle, 2)
	closing := tableConn("loopback", stateClosed, 0)
	tab := tableWith(a, b, closing)
	if victim, _ := tab.evict("loopback", 20); victim != b {
		t.Fatalf("evicted %v, want b, the only idle connection", name(victim, a, b, closing))
	}
	if victim, _ := tab.evict("loopback", 20); victim != nil {
		t.Errorf("evicted %v with no connection idle, want none (refuse the newcomer)", name(victim, a, b, closing))
	}
	if wordState(a.state.Load()) != stateActive {
		t.Error("the connection mid-request was disturbed")
	}
	// Its request over, a counts as busy until the request's deadline
	// (1 + testRequestTimeout), then may go.
	a.state.Store(stateWord(stateIdle, 1))
	if victim, _ := tab.evict("loopback", 100); victim != nil {
		t.Errorf("evicted %v before the deadline of the request seen in progress", name(victim, a, b, closing))
	}
	if victim, since := tab.evict("loopback", 101); victim != a || since != 101 {
		t.Errorf("evicted %v idle since %d, want a idle since 101", name(victim, a, b, closing), since)
	}
	checkTable(t, tab)
}

// TestConnTablePerClientShare: the victim is the longest-idle connection of
// the client holding the most, even when another client's are older, and a
// client never loses one to a newcomer whose client would then hold more.
func TestConnTablePerClientShare(t *testing.T) {
	type conn struct {
		key   string
		state uint64
		since time.Duration
	}
	idle := func(key string, since time.Duration) conn { return conn{key, stateIdle, since} }
	busy := func(key string, since time.Duration) conn { return conn{key, stateActive, since} }
	tests := []struct {
		name     string
		conns    []conn
		newcomer string
		want     int // index in conns of the victim, -1 for none
	}{
		{"the flooder loses its own, not the older connections of others",
			[]conn{idle("mta", 1), idle("mta", 2), idle("flood", 5), idle("flood", 6), idle("flood", 7)}, "mta", 2},
		{"a new client takes from the biggest",
			[]conn{idle("mta", 1), idle("flood", 5), idle("flood", 6)}, "new", 1},
		{"the newcomer's client, at the top, loses its own",
			[]conn{idle("mta", 1), idle("flood", 5), idle("flood", 6)}, "flood", 1},
		{"equal shares: the newcomer's client would hold more, so it loses its own",
			[]conn{idle("a", 1), idle("a", 2), idle("b", 5), idle("b", 6)}, "b", 2},
		{"a smaller client never loses one, however long idle",
			[]conn{idle("old", 1), idle("b", 5)}, "b", 1},
		{"the biggest is all mid-request: the next biggest",
			[]conn{busy("flood", 1), busy("flood", 2), busy("flood", 3), idle("mta", 8), idle("mta", 9)}, "new", 3},
		{"down to the newcomer's own client",
			[]conn{busy("flood", 1), busy("flood", 2), idle("old", 3), idle("mta", 8)}, "mta", 3},
		{"a client as small as the newcomer's may lose its only one",
			[]conn{busy("flood", 1), busy("flood", 2), idle("old", 3)}, "new", 2},
		{"equal sizes: the longest idle",
			[]conn{idle("a", 4), idle("b", 2), idle("c", 3)}, "new", 1},
		{"nothing idle that it may take: refused",
			[]conn{busy("flood", 1), busy("flood", 2), idle("mta", 3)}, "flood", -1},
		{"nothing idle at all: refused",
			[]conn{busy("flood", 1), busy("mta", 3)}, "mta", -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conns := make([]*Conn, len(tc.conns))
			for i, c := range tc.conns {
				conns[i] = tableConn(c.key, c.state, c.since)
			}
			tab := tableWith(conns...)
			victim, _ := tab.evict(tc.newcomer, 50)
			got := -1
			for i, c := range conns {
				if c == victim {
					got = i
				}
			}
			if got != tc.want {
				t.Errorf("evicted conns[%d], want conns[%d]", got, tc.want)
			}
			checkTable(t, tab)
		})
	}
}

// TestConnTableStaysConsistent adds, serves and removes connections of a
// few clients at random (from a fixed seed) and checks the table after each
// step, and that every eviction is the longest-idle connection of a biggest
// eligible client, worked out the slow way.
func TestConnTableStaysConsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := tableWith()
	var open []*Conn
	now := time.Duration(0)
	evictions := 0
	for step := range 20000 {
		now++
		key := fmt.Sprintf("client%d", rng.IntN(6))
		switch op := rng.IntN(10); {
		case op < 3 || len(open) < 40:
			c := tableConn(key, stateIdle, now)
			tab.add(c)
			open = append(open, c)
		case op < 6: // a request begins, or ends
			c := open[rng.IntN(len(open))]
			if w := c.state.Load(); wordState(w) == stateActive {
				c.state.Store(stateWord(stateIdle, wordSince(w)))
			} else {
				c.state.Store(stateWord(stateActive, now))
			}
		case op < 8:
			i := rng.IntN(len(open))
			tab.remove(open[i])
			tab.remove(open[i]) // twice, as an evicted connection's goroutine does
			open = append(open[:i], open[i+1:]...)
		default:
			want := slowVictim(open, key, now)
			got, _ := tab.evict(key, now)
			switch {
			case (got == nil) != (want == nil):
				t.Fatalf("step %d: evict(%s) chose %p, want %p", step, key, got, want)
			case got == nil:
			case slices.Compare(rank(open, got, key), rank(open, want, key)) != 0:
				t.Fatalf("step %d: evict(%s) chose a connection ranked %v, want %v", step, key, rank(open, got, key), rank(open, want, key))
			default:
				evictions++
				open = slices.DeleteFunc(open, func(c *Conn) bool { return c == got })
			}
		}
		if tab.n != len(open) {
			t.Fatalf("step %d: the table holds %d connections, want %d", step, tab.n, len(open))
		}
		checkTable(t, tab)
		if t.Failed() {
			t.Fatalf("step %d", step)
		}
	}
	t.Logf("%d evictions, %d connections open at the end", evictions, len(open))
	if evictions < 1000 {
		t.Errorf("only %d evictions: the test does not exercise the choice", evictions)
	}
}

// slowVictim is connTable.evict's choice worked out from scratch: the
// greatest rank among the idle connections of eligible clients.
func slowVictim(conns []*Conn, key string, now time.Duration) *Conn {
	count := map[string]int{}
	for _, c := range conns {
		count[c.key]++
	}
	var victim *Conn
	for _, c := range conns {
		w := c.state.Load()
		if wordState(w) != stateIdle || max(wordSince(w), c.busyUntil) > now ||
			count[c.key] < count[key]+1 && c.key != key {
			continue
		}
		if victim == nil || slices.Compare(rank(conns, c, key), rank(conns, victim, key)) > 0 {
			victim = c
		}
	}
	return victim
}

// rank orders candidate victims, greatest first: the newcomer's own client
// last, a bigger client first, and among equals the longer idle.
func rank(conns []*Conn, c *Conn, key string) []int64 {
	own := int64(0)
	if c.key == key {
		own = -1
	}
	n := 0
	for _, x := range conns {
		if x.key == c.key {
			n++
		}
	}
	// A victim is already closed: its time is the table's reckoning.
	since := c.idleSince
	if w := c.state.Load(); wordState(w) != stateClosed {
		since = max(wordSince(w), c.busyUntil)
	}
	return []int64{own, int64(n), -int64(since)}
}

// checkTable checks the table's invariants: clients sorted by size with
// their positions right, heaps ordered with their indexes right, counts.
func checkTable(t *testing.T, tab *connTable) {
	t.Helper()
	n := 0
	for i, cl := range tab.byCount {
		if cl.pos != i {
			t.Errorf("client %s at %d thinks it is at %d", cl.key, i, cl.pos)
		}
		if i > 0 && len(tab.byCount[i-1].conns) < len(cl.conns) {
			t.Errorf("clients out of order at %d: %d then %d connections", i, len(tab.byCount[i-1].conns), len(cl.conns))
		}
		if len(cl.conns) == 0 || tab.clients[cl.key] != cl {
			t.Errorf("client %s: %d connections, in the map: %v", cl.key, len(cl.conns), tab.clients[cl.key] == cl)
		}
		for j, c := range cl.conns {
			if c.heapIndex != j || c.client != cl {
				t.Errorf("client %s: connection at %d has index %d", cl.key, j, c.heapIndex)
			}
			if j > 0 && cl.conns[(j-1)/2].idleSince > c.idleSince {
				t.Errorf("client %s: heap out of order at %d", cl.key, j)
			}
		}
		n += len(cl.conns)
	}
	if n != tab.n || len(tab.clients) != len(tab.byCount) {
		t.Errorf("table counts %d connections and %d clients; holds %d and %d", tab.n, len(tab.clients), n, len(tab.byCount))
	}
}

// name names c among conns for messages: "a", "b", ... or "none".
func name(c *Conn, conns ...*Conn) string {
	for i, x := range conns {
		if x == c {
			return string(rune('a' + i))
		}
	}
	return "none"
}

func TestIPClient(t *testing.T) {
	for _, tc := range []struct{ ip, want string }{
		{"192.0.2.1", "192.0.2.1"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"127.0.0.1", "loopback"},
		{"127.3.2.1", "loopback"},
		{"::1", "loopback"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::9", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
	} {
		if got := ipClient(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("ipClient(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
}

// BenchmarkConnTableEvict measures admitting a connection to a full table:
// choosing and removing the victim, and adding the newcomer. Times count
// in nanoseconds; requests take up to a 10 s timeout.
func BenchmarkConnTableEvict(b *testing.B) {
	for _, size := range []int{1000, 10000} {
		for _, shape := range []struct {
			name    string
			clients int     // connections spread over this many clients
			busy    float64 // share of connections mid-request, the longest idle
			served  int     // connections that begin a request between two admissions
			fresh   bool    // every newcomer from a client not seen before
		}{
			{name: "one-client", clients: 1},
			{name: "one-client-serving", clients: 1, served: 10},
			{name: "one-client-half-busy", clients: 1, busy: 0.5},
			{name: "one-client-all-busy", clients: 1, busy: 1},
			{name: "flood-and-mta", clients: 2},
			{name: "all-singletons-newcomer-known", clients: size},
			{name: "all-singletons-newcomer-new", clients: size, fresh: true},
		} {
			b.Run(fmt.Sprintf("%s/%d", shape.name, size), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				tab := tableWith()
				tab.requestTimeout = 10 * time.Second
				conns := make([]*Conn, 0, size)
				now := time.Duration(0)
				for i := range size {
					now++
					state := stateIdle
					if float64(i) < shape.busy*float64(size) {
						state = stateActive
					}
					c := tableConn(fmt.Sprintf("c%d", i%shape.clients), state, now)
					tab.add(c)
					conns = append(conns, c)
				}
				pos := make(map[*Conn]int, size) // index in conns
				for i, c := range conns {
					pos[c] = i
				}
				keys := make([]string, 0, b.N) // made before timing: not what is measured
				for i := range b.N {
					if shape.fresh {
						keys = append(keys, fmt.Sprintf("new%d", i))
					} else {
						keys = append(keys, fmt.Sprintf("c%d", i%shape.clients))
					}
				}
				b.ResetTimer()
				for i := range b.N {
					for range shape.served {
						now++
						if c := conns[rng.IntN(len(conns))]; wordState(c.state.Load()) == stateIdle {
							serve(c, now)
						}
					}
					now++
					victim, _ := tab.evict(keys[i], now)
					if victim == nil {
						continue // refused
					}
					c := tableConn(keys[i], stateIdle, now)
					tab.add(c)
					if shape.served > 0 { // conns is only for serving
						conns[pos[victim]] = c
						pos[c] = pos[victim]
						delete(pos, victim)
					}
				}
			})
		}
	}
}
