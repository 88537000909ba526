package tlsprobe

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a probe,
// a fake server's connection or a cache refresh left running is a bug.
//
// The one exception is the expiry goroutine that
// github.com/hashicorp/golang-lru/v2/expirable starts for every LRU with a
// TTL (a Cache has two per shard). v2.0.7 never closes its done channel and
// has no Close method ("it's decided to add functionality to close it in the
// version later than v2"), so those goroutines live as long as the process
// and nothing the Cache does can stop them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/golang-lru/v2/expirable.NewLRU[...].func1"))
}
