package policyd

import (
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// queue is a bounded queue from the lookup or probe path to a goroutine
// that writes to the state store in batches. Offering never blocks: when
// the queue is full the item is dropped and counted, and the first drop
// since the writer last emptied the queue logs one warning, not one per
// item (a stalled disk would otherwise flood the log).
type queue[T any] struct {
	ch      chan T
	dropped prometheus.Counter
	log     *slog.Logger
	warning string // what a full queue means, for the warning
	warned  atomic.Bool
}

func newQueue[T any](size int, dropped prometheus.Counter, log *slog.Logger, warning string) *queue[T] {
	return &queue[T]{ch: make(chan T, size), dropped: dropped, log: log, warning: warning}
}

// offer queues v, or drops it if the queue is full.
func (q *queue[T]) offer(v T) {
	select {
	case q.ch <- v:
	default:
		q.dropped.Inc()
		if !q.warned.Swap(true) {
			q.log.Warn(q.warning, "queue", cap(q.ch))
		}
	}
}

// take appends to batch what is queued, without waiting, until batch holds
// max items.
func (q *queue[T]) take(batch []T, max int) []T {
	for len(batch) < max {
		select {
		case v := <-q.ch:
			batch = append(batch, v)
		default:
			return batch
		}
	}
	return batch
}

// caughtUp tells the queue that the writer has written everything it
// took; if nothing is queued, the next drop warns again.
func (q *queue[T]) caughtUp() {
	if len(q.ch) == 0 {
		q.warned.Store(false)
	}
}
