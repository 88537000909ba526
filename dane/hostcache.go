package dane

import (
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultHostCacheSize bounds the MX hosts whose TLSA results a HostCache
// keeps.
const DefaultHostCacheSize = 100_000

// HostCache shares the TLSA lookups of an MX host between the domains it
// serves: TLSA records belong to the host and port ("_25._tcp.HOST"), not
// to a domain, so 10,000 domains on one provider's MX hosts need the
// provider's records looked up once per TTL, not once per domain. A result
// is kept as long as the shortest TTL of the answers it rests on; a failed
// lookup, or one without a TTL, is not kept. It is safe for concurrent use.
type HostCache struct {
	results *lru.Cache[hostPort, heldHost]
	now     func() time.Time
}

type hostPort struct {
	host string
	port int
}

// heldHost is a host's result and until when it may answer.
type heldHost struct {
	h     HostTLSA
	until time.Time
}

// NewHostCache returns an empty cache of at most size hosts (0:
// DefaultHostCacheSize) on the clock now (nil: time.Now).
func NewHostCache(size int, now func() time.Time) *HostCache {
	if size <= 0 {
		size = DefaultHostCacheSize
	}
	if now == nil {
		now = time.Now
	}
	results, _ := lru.New[hostPort, heldHost](size) // size > 0: no error
	return &HostCache{results: results, now: now}
}

// Len is the number of hosts held.
func (c *HostCache) Len() int { return c.results.Len() }

// get returns host's result for port if one is held and fresh. A nil
// *HostCache holds nothing.
func (c *HostCache) get(host string, port int) (HostTLSA, bool) {
	if c == nil {
		return HostTLSA{}, false
	}
	held, ok := c.results.Get(hostPort{host, port})
	if !ok || !c.now().Before(held.until) {
		return HostTLSA{}, false
	}
	h := held.h
	h.TTL = held.until.Sub(c.now()) // what is left of it
	return h, true
}

// put keeps host's result for port for its TTL, unless it is a failure.
func (c *HostCache) put(host string, port int, h HostTLSA) {
	if c == nil || h.Status == Failure || h.TTL <= 0 {
		return
	}
	c.results.Add(hostPort{host, port}, heldHost{h: h, until: c.now().Add(h.TTL)})
}
