// Package fleet lets the tlspolicyd daemons of a fleet (the relays of one
// sender) share what each learns through a Redis (or Valkey): pins, with
// operators' removals; the findings of probes, MTA-STS policies and DANE
// verdicts with them; and one probe per destination at a time.
//
// Memory stays the read path: a lookup never calls Redis. Each daemon
// keeps its own copy in memory and in its state file, and the fleet code
// runs beside it in three goroutines: a writer that sends the daemon's
// changes (from a bounded queue) and publishes them on a channel, a
// subscriber that applies the changes of the others as they are
// published, and a reconciler that, every second, reads what changed in
// Redis since it last looked (a sorted set per kind, scored by a
// sequence) to catch what the channel lost, and after Redis was
// unreachable, or came back empty (a new epoch), compares everything both
// ways and writes back what Redis lacks. Pins merge by a rule (see
// Record) under which a pin never goes down because a message was missed.
//
// When Redis is down, slow or refuses, the daemon answers from memory as
// it would alone: pins stay, probes run locally, the queue drops what does
// not fit (counted) and the next full comparison sends it.
package fleet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// Sizes and timeouts.
const (
	queueLen        = 8192 // changes waiting for the writer
	writeBatch      = 256  // changes sent in one pipeline at most
	opTimeout       = 2 * time.Second
	fullTimeout     = 2 * time.Minute // a full comparison of a large fleet
	leaseTimeout    = 500 * time.Millisecond
	leasePoll       = 200 * time.Millisecond
	defaultInterval = time.Second
	fullEvery       = 5 * time.Minute // a full comparison, also to prune what expired
	pullLookback    = 5               // intervals of sequence numbers read again (writes in flight)
	pullLimit       = 10000           // changes read per interval; more: a full comparison
	scanCount       = 1000
	peerTimeout     = 30 * time.Second // a daemon not heard of for this long is not counted
)

// ErrDown is returned by Lease while Redis is unreachable: probe locally.
var ErrDown = errors.New("the fleet's Redis is unreachable")

// Local is what the fleet needs of the daemon it serves.
type Local interface {
	// Pins returns every pin in memory.
	Pins() []state.Pin
	// Pin returns the pin of key in memory, if any.
	Pin(key string) (state.Pin, bool)
	// MergePin takes a peer's pin if it beats the daemon's own (Beats).
	MergePin(p state.Pin)
	// RemovePin drops the pin of key unless it was confirmed after at.
	RemovePin(key string, at time.Time)
	// Findings calls put with each destination's findings worth sharing
	// that want asks for (by key and when they were gathered), encoded.
	Findings(want func(key string, version time.Time) bool, put func(key string, version time.Time, data []byte))
	// PutFindings takes a peer's findings of key if they are newer than
	// the daemon's own, as if it had probed.
	PutFindings(key string, version time.Time, data []byte)
}

// Config is how a Fleet is built.
type Config struct {
	Redis       rules.RedisSettings
	PinTTL      time.Duration // state.pin_ttl: tombstones are kept this long
	FindingsTTL time.Duration // probe.ttl: findings are pruned from Redis after it
	// Lease is how long a probe lease holds: longer than a probe takes,
	// short enough that a daemon that dies holding one delays the probe
	// little.
	Lease    time.Duration
	Interval time.Duration // reconciliation period (0: a second)
	Now      func() time.Time
	Logger   *slog.Logger
	Metrics  *Metrics
}

// Fleet is one daemon's link to its fleet.
type Fleet struct {
	cfg  Config
	rdb  redis.UniversalClient
	keys keys
	node string // this daemon's random id, to skip its own messages
	log  *slog.Logger
	m    *Metrics

	q     chan op
	local Local

	mu      sync.Mutex
	tombs   map[string]time.Time         // key -> the latest removal heard of
	waiters map[string][]*findingsWaiter // key -> probes waiting for a peer's findings
	rewrite map[kindKey]struct{}         // written part way: the next full comparison writes them again

	up       atomic.Bool
	warned   atomic.Bool // the current outage was logged
	needFull atomic.Bool
	lastSync atomic.Int64 // Unix nanoseconds
	status   atomic.Pointer[Status]

	// Reconciler state (its goroutine only).
	epoch     string
	seqs      []int64 // the sequence at the last pullLookback syncs
	lastFull  time.Time
	historyID string // the last record of the shared history read

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// keys are the Redis names, all under the key prefix.
type keys struct {
	prefix, seq, epoch, nodes, channel, history string
}

func (k keys) hash(kind byte) string {
	if kind == kindPin {
		return k.prefix + "pins"
	}
	return k.prefix + "findings"
}
func (k keys) index(kind byte) string  { return k.hash(kind) + ":seq" }
func (k keys) lease(key string) string { return k.prefix + "lease:" + key }

// kindKey names a value in Redis.
type kindKey struct {
	kind byte
	key  string
}

// op is one change for the writer.
type op struct {
	kind    byte
	key     string
	value   []byte
	store   bool // into the hash (else: the channel only)
	release bool // delete the probe lease of key instead
}

// New builds a fleet link; nothing connects until Start.
func New(cfg Config) *Fleet {
	if cfg.Interval <= 0 {
		cfg.Interval = defaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := cfg.Redis
	opts := &redis.UniversalOptions{
		Addrs: r.Addrs, MasterName: r.MasterName, Username: r.Username, Password: r.Password,
		// RESP2 and no CLIENT SETINFO: commands an ACL confined to the
		// prefix need not allow.
		Protocol: 2, DisableIdentity: true,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
		PoolTimeout: time.Second, MaxRetries: 1, PoolSize: 8,
	}
	if r.TLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	var id [nodeIDLen / 2]byte
	rand.Read(id[:])
	p := r.KeyPrefix
	return &Fleet{
		cfg: cfg, rdb: redis.NewUniversalClient(opts), node: hex.EncodeToString(id[:]), log: cfg.Logger, m: cfg.Metrics,
		keys: keys{prefix: p, seq: p + "seq", epoch: p + "epoch", nodes: p + "nodes", channel: p + "events", history: p + "history"},
		q:    make(chan op, queueLen), tombs: map[string]time.Time{}, waiters: map[string][]*findingsWaiter{},
		rewrite: map[kindKey]struct{}{},
	}
}

// Start runs the fleet's goroutines for local until Close.
func (f *Fleet) Start(local Local) {
	f.local = local
	f.needFull.Store(true)
	f.status.Store(&Status{Node: f.node})
	ctx, cancel := context.WithCancel(context.Background())
	f.stop = cancel
	f.wg.Add(3)
	go f.writer(ctx)
	go f.subscriber(ctx)
	go f.reconciler(ctx)
}

// Close sends what is queued (for at most a few seconds) and stops.
func (f *Fleet) Close() error {
	if f.stop != nil {
		f.stop()
		f.wg.Wait()
	}
	return f.rdb.Close()
}

// PinChanged shares a pin the daemon learnt or an operator added.
func (f *Fleet) PinChanged(p state.Pin) {
	f.mu.Lock()
	r := RecordOf(&p, f.tombs[p.Key])
	f.mu.Unlock()
	f.offer(op{kind: kindPin, key: p.Key, value: encodeRecord(r), store: true})
}

// PinRemoved shares an operator's removal of a pin, at at.
func (f *Fleet) PinRemoved(key string, at time.Time) {
	f.mu.Lock()
	if at.After(f.tombs[key]) {
		f.tombs[key] = at
	}
	r := Record{Removed: f.tombs[key]}
	f.mu.Unlock()
	f.offer(op{kind: kindPin, key: key, value: encodeRecord(r), store: true})
}

// PublishFindings shares findings of key gathered at version: stored in
// Redis if store (findings with evidence), only published otherwise (a
// failed probe, for the daemons waiting on it).
func (f *Fleet) PublishFindings(key string, version time.Time, data []byte, store bool) {
	f.offer(op{kind: kindFindings, key: key, value: encodeFindings(version, data), store: store})
}

// offer queues a change without waiting. One that does not fit is
// dropped and counted, and the next full comparison sends it.
func (f *Fleet) offer(o op) {
	select {
	case f.q <- o:
	default:
		f.m.dropped.Inc()
		f.needFull.Store(true)
		f.log.Warn("fleet: the queue to Redis is full; changes are sent at the next full comparison instead",
			"queue", queueLen)
	}
}

// writer sends queued changes in pipelines until ctx ends, then what is
// left, for a few seconds at most.
func (f *Fleet) writer(ctx context.Context) {
	defer f.wg.Done()
	batch := make([]op, 0, writeBatch)
	for {
		select {
		case o := <-f.q:
			batch = f.take(append(batch[:0], o))
			f.send(batch)
		case <-ctx.Done():
			deadline := time.Now().Add(opTimeout)
			for len(f.q) > 0 && time.Now().Before(deadline) && f.up.Load() {
				f.send(f.take(batch[:0]))
			}
			return
		}
	}
}

// take adds queued changes to batch, up to writeBatch.
func (f *Fleet) take(batch []op) []op {
	for len(batch) < writeBatch {
		select {
		case o := <-f.q:
			batch = append(batch, o)
		default:
			return batch
		}
	}
	return batch
}

// send writes a batch: the values, then a sequence number for each
// stored change (so that the reconcilers of the others find it), the
// releases, and a message each.
func (f *Fleet) send(batch []op) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var stored []op
	for _, o := range batch {
		if o.store {
			stored = append(stored, o)
		}
	}
	pipe := f.rdb.Pipeline()
	if len(stored) > 0 {
		seq, err := f.store(ctx, stored)
		if err != nil {
			f.unindexed(stored)
			f.trouble("write", err)
			return
		}
		f.index(ctx, pipe, stored, seq)
	}
	for _, o := range batch {
		if o.release {
			pipe.Del(ctx, f.keys.lease(o.key))
			continue
		}
		if o.kind == kindDecisions {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: f.keys.history, MaxLen: historyLen, Approx: true,
				Values: []any{"n", f.node, "d", o.value}})
			continue
		}
		pipe.Publish(ctx, f.keys.channel, message{kind: o.kind, node: f.node, key: o.key, value: o.value}.encode())
	}
	f.m.ops.WithLabelValues("write").Inc()
	if _, err := pipe.Exec(ctx); err != nil {
		f.unindexed(stored)
		f.trouble("write", err)
		return
	}
	for _, o := range batch {
		if !o.release {
			f.m.published.WithLabelValues(kindName(o.kind)).Inc()
		}
	}
}

// store writes the values of changes and only then takes their sequence
// numbers, returning the one before the first. A reconciler reads the
// sequence before it compares everything and pulls after it from then
// on, so every value numbered up to what it read must already be in the
// hash: had the numbers come first (as they once did), a value numbered
// just before that read but written just after the comparison went past
// its key was lost to that daemon until its next full comparison. (One
// round trip after another, not a transaction: in a cluster the hash and
// the counter may live on different nodes.)
func (f *Fleet) store(ctx context.Context, ops []op) (int64, error) {
	pipe := f.rdb.Pipeline()
	for _, o := range ops {
		pipe.HSet(ctx, f.keys.hash(o.kind), o.key, o.value)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	n := int64(len(ops))
	end, err := f.rdb.IncrBy(ctx, f.keys.seq, n).Result()
	if err != nil {
		return 0, err
	}
	return end - n, nil
}

// index queues on pipe the index entries of changes stored by store,
// numbered after seq.
func (f *Fleet) index(ctx context.Context, pipe redis.Pipeliner, ops []op, seq int64) {
	for _, o := range ops {
		seq++
		pipe.ZAdd(ctx, f.keys.index(o.kind), redis.Z{Score: float64(seq), Member: o.key})
	}
}

// unindexed notes changes whose write failed part way: their values may
// be in Redis without an index entry, where the others' pulls do not find
// them and a full comparison, finding them equal, would not write them
// again. The next full comparison writes them again.
func (f *Fleet) unindexed(ops []op) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range ops {
		f.rewrite[kindKey{o.kind, o.key}] = struct{}{}
	}
}

// trouble records a failed Redis operation: the daemon goes on alone,
// and once Redis answers again everything is compared both ways.
func (f *Fleet) trouble(what string, err error) {
	f.m.errors.WithLabelValues(what).Inc()
	f.needFull.Store(true)
	if f.up.Swap(false) {
		f.m.up.Set(0)
	}
	// One warning per outage (tlspolicyd_fleet_redis_up says the rest);
	// the retries, every second, at debug level.
	level := slog.LevelDebug
	if !f.warned.Swap(true) {
		level = slog.LevelWarn
	}
	f.log.Log(context.Background(), level, "fleet: Redis operation failed; answering from memory, catching up when Redis is back",
		"op", what, "err", err)
}

// subscriber applies the others' changes as they are published. The
// client reconnects by itself; what is lost meanwhile, the reconciler
// reads.
func (f *Fleet) subscriber(ctx context.Context) {
	defer f.wg.Done()
	ps := f.rdb.Subscribe(ctx, f.keys.channel)
	defer ps.Close()
	ch := ps.Channel(redis.WithChannelSize(1024))
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				return
			}
			m, err := decodeMessage(msg.Payload)
			if err != nil {
				f.invalid("message", err)
				continue
			}
			if m.node == f.node {
				continue
			}
			f.m.received.WithLabelValues(kindName(m.kind)).Inc()
			f.apply(m.kind, m.key, m.value, false)
		case <-ctx.Done():
			return
		}
	}
}

// invalid counts and logs a value from Redis that was ignored.
func (f *Fleet) invalid(what string, err error) {
	f.m.invalid.Inc()
	f.log.Warn("fleet: ignored a value from Redis that does not decode", "what", what, "err", err)
}

// apply takes a peer's change of key. A pin record is merged (and, if
// ours says more than Redis's, ours is written back when fromRedis); a
// findings value goes to the daemon and to the probes waiting for it.
func (f *Fleet) apply(kind byte, key string, value []byte, fromRedis bool) {
	if len(key) == 0 || len(key) > maxKey {
		f.invalid(kindName(kind), errBadValue)
		return
	}
	switch kind {
	case kindPin:
		r, err := decodeRecord(key, value)
		if err != nil {
			f.invalid("pin", err)
			return
		}
		merged := f.mergePin(key, r)
		if fromRedis && !Same(merged, r) && !merged.expired(f.cfg.Now(), f.cfg.PinTTL) {
			f.offer(op{kind: kindPin, key: key, value: encodeRecord(merged), store: true})
		}
	case kindFindings:
		version, data, err := decodeFindings(value)
		if err != nil {
			f.invalid("findings", err)
			return
		}
		f.local.PutFindings(key, version, data)
		f.wake(key, version, data)
	}
}

// mergePin merges a peer's record of key into the daemon's and returns
// the merged record.
func (f *Fleet) mergePin(key string, r Record) Record {
	now := f.cfg.Now()
	f.mu.Lock()
	tomb := f.tombs[key]
	if r.Removed.After(tomb) {
		f.tombs[key] = r.Removed
	}
	f.mu.Unlock()
	if r.Removed.After(tomb) {
		f.local.RemovePin(key, r.Removed)
	}
	merged := Merge(f.localRecord(key), r)
	if p := merged.Effective(now); p != nil && p.Valid(now) {
		f.local.MergePin(*p) // taken only if it beats the daemon's
	}
	return merged
}

// localRecord is the daemon's record of key.
func (f *Fleet) localRecord(key string) Record {
	f.mu.Lock()
	removed := f.tombs[key]
	f.mu.Unlock()
	if p, ok := f.local.Pin(key); ok {
		return RecordOf(&p, removed)
	}
	return Record{Removed: removed}
}

func kindName(kind byte) string {
	switch kind {
	case kindPin:
		return "pin"
	case kindDecisions:
		return "decision"
	}
	return "findings"
}

// LibraryLogger routes the Redis client library's own messages (it has
// one logger per process, which main sets once with redis.SetLogger) to
// log at debug level: the fleet logs Redis trouble itself, rate-limited.
type LibraryLogger struct{ Log *slog.Logger }

// Printf implements the library's logging interface.
func (l LibraryLogger) Printf(ctx context.Context, format string, v ...any) {
	l.Log.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
