package main

import (
	"bytes"
	"fmt"
	"math/bits"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Latencies go into a fixed log-linear histogram (the HDR histogram idea):
// values below 2^subBits nanoseconds get a bucket each, and every power of
// two above is split into 2^(subBits-1) equal buckets, so a recorded value is
// known to within 1/64 (about 1.6%). Recording is an index computation and
// an increment: the load loop never allocates, so the measurement does not
// feed the collector it would then be measuring.
const (
	subBits    = 7
	subCount   = 1 << subBits   // 128 exact buckets for 0..127 ns
	subHalf    = subCount / 2   // buckets per power of two above that
	maxBits    = 40             // values up to 2^40 ns, about 18 minutes
	maxLatency = 1<<maxBits - 1 // longer values are clamped
	numBuckets = (maxBits-subBits)*subHalf + subCount
)

// histogram counts latencies in nanoseconds. The zero value is ready to use.
type histogram struct {
	counts [numBuckets]uint64
	n      uint64
}

// bucketOf maps a value in nanoseconds to its bucket index.
func bucketOf(v uint64) int {
	if v > maxLatency {
		v = maxLatency
	}
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits
	return shift*subHalf + int(v>>shift)
}

// bucketRange returns the smallest value of bucket i and the bucket's width.
func bucketRange(i int) (lower, width uint64) {
	if i < subCount {
		return uint64(i), 1
	}
	shift := i/subHalf - 1
	top := uint64(i%subHalf + subHalf)
	return top << shift, 1 << shift
}

func (h *histogram) record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketOf(v)]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// percentile returns the nearest-rank p-quantile (p in [0, 1]): the value
// below or at which at least p of the recorded values lie, reported as the
// middle of its bucket. It is 0 for an empty histogram.
func (h *histogram) percentile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(p*float64(h.n) + 0.9999999)
	rank = max(1, min(rank, h.n))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lower, width := bucketRange(i)
			return time.Duration(lower + width/2)
		}
	}
	panic("unreachable: counts do not add up to n")
}

// median of xs (the mean of the two middle values for an even count), used
// to summarise rounds: one disturbed round does not move it.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// parseProcStat returns utime+stime in clock ticks from the contents of
// /proc/PID/stat. The second field (comm, in parentheses) is the executable
// name and may itself contain spaces and ')', so the fields are counted from
// after the last ')': state is the first there, utime the 12th, stime the
// 13th (fields 3, 14 and 15 of proc(5)).
func parseProcStat(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat: utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat: stime: %w", err)
	}
	return utime + stime, nil
}

// clockTicks is USER_HZ, the unit of utime and stime. It is 100 on every
// Linux build in practice; getconf asks the system once to be sure, and 100
// is the fallback if getconf is missing.
var clockTicks = sync.OnceValue(func() uint64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
})

// processCPU returns the CPU time (user + system, all threads) that process
// pid has used so far. Its resolution is one clock tick (10 ms), which is
// why the measured windows are seconds long.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	ticks, err := parseProcStat(b)
	if err != nil {
		return 0, err
	}
	return time.Duration(ticks) * time.Second / time.Duration(clockTicks()), nil
}
