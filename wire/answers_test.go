package wire

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestAnswerSnapshotWhileClosing scrapes the answer counts while
// connections close: a snapshot must never count more answers than were
// given. A snapshot that read the open connections, let go of them, and
// only then read the totals of closed ones counted a connection that
// closed in between twice, so that tlspolicyd_answers_total went up and
// then down (a counter reset to Prometheus). The race is narrow: the test
// runs for a while and can pass by luck on a broken build, but it never
// fails on a correct one.
func TestAnswerSnapshotWhileClosing(t *testing.T) {
	t.Parallel()
	const (
		perConn  = 10 // answers per connection, so that a double count stands out
		duration = time.Second
	)
	s := newRequestCollector().protocol("socketmap")
	var given atomic.Uint64 // answers given so far, counted before they are
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c := s.OpenConn()
				given.Add(perConn)
				for range perConn {
					c.Answer("tlspolicy", "verify")
				}
				s.CloseConn(c)
			}
		}()
	}
	var snapshots, over int
	var worst, worstGiven uint64
	for deadline := time.Now().Add(duration); time.Now().Before(deadline); snapshots++ {
		var sum uint64
		for _, n := range s.answerSnapshot() {
			sum += n
		}
		if g := given.Load(); sum > g {
			over++
			worst, worstGiven = sum, g
		}
	}
	close(stop)
	wg.Wait()
	if over > 0 {
		t.Errorf("%d of %d snapshots counted more answers than were given (e.g. %d of %d)", over, snapshots, worst, worstGiven)
	}
}
