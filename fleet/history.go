package fleet

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/tlspolicyd/tlspolicyd/state"
)

// The decision history is shared as a Redis stream that each daemon adds
// its records to and reads the others' from, capped at about historyLen
// records (XADD MAXLEN ~): a daemon that was away longer than the stream
// holds misses the oldest of the others' records, which its own history
// never needed to answer. A daemon joining reads from the stream's end.

// Sizes of the shared history.
const (
	historyLen    = 100000   // records the stream keeps, about
	historyRead   = 1000     // records read per reconciliation at most
	maxDecision   = 16 << 10 // one record
	kindDecisions = 'd'
)

// HistoryLocal is what the fleet needs of a daemon that shares its
// decision history: somewhere to put the others' records.
type HistoryLocal interface {
	AddDecisions(ds []state.Decision)
}

// PublishDecisions shares records of the daemon's decision history.
func (f *Fleet) PublishDecisions(ds []state.Decision) {
	for _, d := range ds {
		b, err := json.Marshal(d)
		if err != nil || len(b) > maxDecision {
			continue
		}
		f.offer(op{kind: kindDecisions, key: d.Destination, value: b})
	}
}

// readHistory reads the others' records added since the last read.
func (f *Fleet) readHistory(ctx context.Context, fresh bool) error {
	hl, ok := f.local.(HistoryLocal)
	if !ok {
		return nil
	}
	if fresh || f.historyID == "" {
		// From the end: what came before is not this daemon's to catch
		// up (a new Redis starts from nothing).
		last, err := f.rdb.XRevRangeN(ctx, f.keys.history, "+", "-", 1).Result()
		if err != nil {
			return err
		}
		f.historyID = "0"
		if len(last) > 0 {
			f.historyID = last[0].ID
		}
		return nil
	}
	streams, err := f.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{f.keys.history, f.historyID}, Count: historyRead, Block: -1}).Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return err
	}
	var ds []state.Decision
	for _, s := range streams {
		for _, m := range s.Messages {
			f.historyID = m.ID
			if node, _ := m.Values["n"].(string); node == f.node {
				continue
			}
			v, _ := m.Values["d"].(string)
			var d state.Decision
			if len(v) > maxDecision || json.Unmarshal([]byte(v), &d) != nil || d.Destination == "" || d.Map == "" ||
				len(d.Destination) > maxKey {
				f.invalid("decision", errBadValue)
				continue
			}
			ds = append(ds, d)
		}
	}
	if len(ds) > 0 {
		f.m.received.WithLabelValues("decision").Add(float64(len(ds)))
		hl.AddDecisions(ds)
	}
	return nil
}
