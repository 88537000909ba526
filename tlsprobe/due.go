package tlsprobe

import (
	"container/heap"
	"sync"
	"time"
)

// dueQueue holds the refreshes a Cache starts by itself: entries whose
// refresh comes before they expire (Evidence.RefreshBy, a published
// record's TTL), by time. It is bounded: past max entries, a new one is
// not queued and its destination is refreshed on its next lookup instead,
// as every other entry is.
type dueQueue[V Evidence] struct {
	mu    sync.Mutex
	items dueHeap[V]
	max   int
}

// dueItem is one queued refresh: e is the entry it was queued for, so that
// an entry replaced meanwhile (refreshed by a lookup, evicted) is skipped.
type dueItem[V Evidence] struct {
	t   Target
	key string
	e   *entry[V]
}

func (q *dueQueue[V]) push(t Target, key string, e *entry[V]) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) < q.max {
		heap.Push(&q.items, dueItem[V]{t: t, key: key, e: e})
	}
}

// popDue removes and returns the items due at now.
func (q *dueQueue[V]) popDue(now time.Duration) []dueItem[V] {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []dueItem[V]
	for len(q.items) > 0 && now >= q.items[0].e.refreshAt {
		out = append(out, heap.Pop(&q.items).(dueItem[V]))
	}
	return out
}

func (q *dueQueue[V]) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// dueHeap is a container/heap of items, soonest refresh first.
type dueHeap[V Evidence] []dueItem[V]

func (h dueHeap[V]) Len() int           { return len(h) }
func (h dueHeap[V]) Less(i, j int) bool { return h[i].e.refreshAt < h[j].e.refreshAt }
func (h dueHeap[V]) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap[V]) Push(x any)        { *h = append(*h, x.(dueItem[V])) }
func (h *dueHeap[V]) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = dueItem[V]{}
	*h = old[:len(old)-1]
	return x
}

// startDueEvery calls startDue every tick until the cache is closed.
func (c *Cache[V]) startDueEvery(tick time.Duration) {
	defer c.wg.Done()
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			c.startDue()
		case <-c.ctx.Done():
			return
		}
	}
}

// startDue starts the background refresh of every queued entry that is
// due, still cached and read by a lookup since it was stored.
func (c *Cache[V]) startDue() {
	for _, it := range c.due.popDue(c.clock.Now()) {
		if cur, ok := c.shard(it.key).load(it.key); ok && cur == it.e && it.e.read.Load() {
			c.start(it.t, it.key)
		}
	}
}
