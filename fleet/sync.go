package fleet

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Status is the fleet's health as the status page shows it.
type Status struct {
	Node      string
	Connected bool
	LastSync  time.Time // the last reconciliation that reached Redis
	Peers     int       // daemons (this one included) heard from within peerTimeout
	Pins      int64     // pin records in Redis (tombstones included)
	Findings  int64     // destinations with findings in Redis
}

// Status returns the fleet's health as of the last reconciliation.
func (f *Fleet) Status() Status {
	s := Status{Node: f.node}
	if p := f.status.Load(); p != nil {
		s = *p
	}
	s.Connected = f.up.Load()
	if n := f.lastSync.Load(); n != 0 {
		s.LastSync = time.Unix(0, n)
	}
	return s
}

// reconciler compares the daemon's state with Redis's every interval.
func (f *Fleet) reconciler(ctx context.Context) {
	defer f.wg.Done()
	tick := time.NewTicker(f.cfg.Interval)
	defer tick.Stop()
	f.sync(ctx)
	for {
		select {
		case <-tick.C:
			f.sync(ctx)
		case <-ctx.Done():
			return
		}
	}
}

// sync is one reconciliation: the epoch and sequence first; then a full
// comparison if Redis was unreachable, is new (an empty Redis starts a new
// epoch) or one is due; else the changes since the last syncs.
func (f *Fleet) sync(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	f.m.ops.WithLabelValues("sync").Inc()
	epoch, seq, err := f.epochSeq(c)
	if err != nil {
		if ctx.Err() == nil {
			f.trouble("sync", err)
		}
		return
	}
	now := f.cfg.Now()
	full := f.needFull.Load() || epoch != f.epoch || now.Sub(f.lastFull) > fullEvery
	if !full && len(f.seqs) > 0 && seq < f.seqs[len(f.seqs)-1] {
		full = true // the counter went back: not the Redis we knew
	}
	if full {
		f.needFull.Store(false) // a failure during it sets it again
		fc, fcancel := context.WithTimeout(ctx, fullTimeout)
		began := time.Now()
		err = f.fullSync(fc)
		fcancel()
		if err == nil {
			f.log.Info("fleet: compared everything with Redis", "took", time.Since(began).Round(time.Millisecond).String())
		}
		c, cancel = context.WithTimeout(ctx, opTimeout) // the rest gets its own time
		defer cancel()
		if err == nil {
			err = f.readHistory(c, epoch != f.epoch)
		}
		if err == nil {
			f.epoch, f.lastFull, f.seqs = epoch, now, []int64{seq}
		}
	} else {
		err = f.readHistory(c, false)
	}
	if err == nil && !full {
		err = f.pull(c, f.seqs[0])
		if f.seqs = append(f.seqs, seq); len(f.seqs) > pullLookback {
			f.seqs = f.seqs[1:]
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			f.trouble("sync", err)
		}
		return
	}
	if err := f.heartbeat(c, now); err != nil {
		f.trouble("sync", err)
		return
	}
	if !f.up.Swap(true) {
		f.m.up.Set(1)
		f.warned.Store(false)
		f.log.Info("fleet: connected to Redis; pins and findings are shared", "node", f.node)
	}
	f.lastSync.Store(now.UnixNano())
	f.m.lastSync.Set(float64(now.UnixNano()) / 1e9)
}

// epochSeq reads the epoch (making one if Redis has none: it is new or
// was emptied) and the change sequence.
func (f *Fleet) epochSeq(ctx context.Context) (string, int64, error) {
	fresh := f.node + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := f.rdb.SetNX(ctx, f.keys.epoch, fresh, 0).Result(); err != nil {
		return "", 0, err
	}
	pipe := f.rdb.Pipeline()
	e := pipe.Get(ctx, f.keys.epoch)
	s := pipe.Get(ctx, f.keys.seq)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", 0, err
	}
	seq, err := s.Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", 0, err
	}
	return e.Val(), seq, nil
}

// pull reads the changes with a sequence number after from.
func (f *Fleet) pull(ctx context.Context, from int64) error {
	for _, kind := range []byte{kindPin, kindFindings} {
		keys, err := f.rdb.ZRangeByScore(ctx, f.keys.index(kind), &redis.ZRangeBy{
			Min: "(" + strconv.FormatInt(from, 10), Max: "+inf", Count: pullLimit}).Result()
		if err != nil {
			return err
		}
		if len(keys) >= pullLimit {
			f.needFull.Store(true) // too many to read one by one
		}
		if err := f.read(ctx, kind, keys); err != nil {
			return err
		}
	}
	return nil
}

// read applies the values of keys of a kind.
func (f *Fleet) read(ctx context.Context, kind byte, keys []string) error {
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), scanCount)]
		keys = keys[len(chunk):]
		vals, err := f.rdb.HMGet(ctx, f.keys.hash(kind), chunk...).Result()
		if err != nil {
			return err
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				f.apply(kind, chunk[i], []byte(s), true)
			}
		}
	}
	return nil
}

// fullSync compares everything both ways: what Redis has is applied here
// (pins merged, newer findings taken), and what this daemon has that
// Redis lacks, or that beats Redis's copy, is written back. Records that
// expired are removed from Redis.
func (f *Fleet) fullSync(ctx context.Context) (err error) {
	now := f.cfg.Now()
	// What was written part way is written again, whatever Redis has.
	f.mu.Lock()
	rewrite := f.rewrite
	f.rewrite = map[kindKey]struct{}{}
	f.mu.Unlock()
	defer func() {
		if err != nil {
			f.mu.Lock()
			for k := range rewrite {
				f.rewrite[k] = struct{}{}
			}
			f.mu.Unlock()
		}
	}()
	inRedis := map[string]bool{}
	var stale []string
	type keyed struct {
		key string
		r   Record
	}
	var back []keyed // records that say more than Redis's
	err = f.scan(ctx, kindPin, func(key string, value []byte) {
		r, err := decodeRecord(key, value)
		if err != nil {
			f.invalid("pin", err)
			return
		}
		if r.expired(now, f.cfg.PinTTL) {
			stale = append(stale, key)
			return
		}
		inRedis[key] = true
		_, again := rewrite[kindKey{kindPin, key}]
		if merged := f.mergePin(key, r); again || !Same(merged, r) {
			back = append(back, keyed{key, merged})
		}
	})
	if err != nil {
		return err
	}
	w := f.batchWriter(ctx)
	if err := w.drop(kindPin, stale); err != nil {
		return err
	}
	f.mu.Lock()
	for key, at := range f.tombs {
		if now.Sub(at) > f.cfg.PinTTL {
			delete(f.tombs, key)
		}
	}
	keys := make([]string, 0, len(f.tombs))
	for key := range f.tombs {
		keys = append(keys, key)
	}
	f.mu.Unlock()
	for _, p := range f.local.Pins() {
		keys = append(keys, p.Key)
	}
	for _, key := range keys {
		if !inRedis[key] {
			inRedis[key] = true // once
			if r := f.localRecord(key); !r.expired(now, f.cfg.PinTTL) {
				back = append(back, keyed{key, r})
			}
		}
	}
	for _, b := range back {
		if err := w.put(kindPin, b.key, encodeRecord(b.r)); err != nil {
			return err
		}
	}

	versions := map[string]time.Time{}
	stale = stale[:0]
	err = f.scan(ctx, kindFindings, func(key string, value []byte) {
		version, data, err := decodeFindings(value)
		if err != nil {
			f.invalid("findings", err)
			return
		}
		if now.Sub(version) > f.cfg.FindingsTTL {
			stale = append(stale, key)
			return
		}
		versions[key] = version
		f.local.PutFindings(key, version, data)
	})
	if err != nil {
		return err
	}
	if err := w.drop(kindFindings, stale); err != nil {
		return err
	}
	var werr error
	f.local.Findings(func(key string, version time.Time) bool {
		_, again := rewrite[kindKey{kindFindings, key}]
		newer := version.After(versions[key]) || again && version.Equal(versions[key])
		return werr == nil && newer && now.Sub(version) < f.cfg.FindingsTTL
	}, func(key string, version time.Time, data []byte) {
		if werr == nil {
			werr = w.put(kindFindings, key, encodeFindings(version, data))
		}
	})
	if werr != nil {
		return werr
	}
	return w.flush()
}

// scan calls fn with every field of a kind's hash.
func (f *Fleet) scan(ctx context.Context, kind byte, fn func(key string, value []byte)) error {
	var cursor uint64
	for {
		kv, next, err := f.rdb.HScan(ctx, f.keys.hash(kind), cursor, "", scanCount).Result()
		if err != nil {
			return err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if len(kv[i]) == 0 || len(kv[i]) > maxKey {
				f.invalid(kindName(kind), errBadValue)
				continue
			}
			fn(kv[i], []byte(kv[i+1]))
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// heartbeat counts this daemon among the living and reads the fleet's
// sizes for the status page.
func (f *Fleet) heartbeat(ctx context.Context, now time.Time) error {
	pipe := f.rdb.Pipeline()
	pipe.ZAdd(ctx, f.keys.nodes, redis.Z{Score: float64(now.Unix()), Member: f.node})
	pipe.ZRemRangeByScore(ctx, f.keys.nodes, "-inf", strconv.FormatInt(now.Add(-peerTimeout).Unix(), 10))
	peers := pipe.ZCard(ctx, f.keys.nodes)
	pins := pipe.HLen(ctx, f.keys.hash(kindPin))
	findings := pipe.HLen(ctx, f.keys.hash(kindFindings))
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	f.status.Store(&Status{Node: f.node, Peers: int(peers.Val()), Pins: pins.Val(), Findings: findings.Val()})
	return nil
}

// batchWriter writes many values at once, for a full comparison (which
// would overflow the writer's queue).
type batchWriter struct {
	f    *Fleet
	ctx  context.Context
	ops  []op
	dels map[byte][]string
}

func (f *Fleet) batchWriter(ctx context.Context) *batchWriter {
	return &batchWriter{f: f, ctx: ctx, dels: map[byte][]string{}}
}

func (w *batchWriter) put(kind byte, key string, value []byte) error {
	w.ops = append(w.ops, op{kind: kind, key: key, value: value, store: true})
	if len(w.ops) >= scanCount {
		return w.flush()
	}
	return nil
}

func (w *batchWriter) drop(kind byte, keys []string) error {
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), scanCount)]
		keys = keys[len(chunk):]
		pipe := w.f.rdb.Pipeline()
		pipe.HDel(w.ctx, w.f.keys.hash(kind), chunk...)
		members := make([]any, len(chunk))
		for i, k := range chunk {
			members[i] = k
		}
		pipe.ZRem(w.ctx, w.f.keys.index(kind), members...)
		if _, err := pipe.Exec(w.ctx); err != nil {
			return err
		}
	}
	return nil
}

// flush writes the values gathered, then their sequence numbers (see
// store), without publishing them (the others' reconcilers read them).
func (w *batchWriter) flush() error {
	if len(w.ops) == 0 {
		return nil
	}
	ops := w.ops
	w.ops = nil
	seq, err := w.f.store(w.ctx, ops)
	if err == nil {
		pipe := w.f.rdb.Pipeline()
		w.f.index(w.ctx, pipe, ops, seq)
		_, err = pipe.Exec(w.ctx)
	}
	if err != nil {
		w.f.unindexed(ops)
	}
	return err
}
