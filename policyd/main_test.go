package policyd

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// server, connection and prober started by a test must be shut down by it.
// The one exception is the expiry goroutine that golang-lru's expirable LRU
// starts per cache and never stops (the library has no Close); the daemon
// creates its cache once, so it lives as long as the process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/golang-lru/v2/expirable.NewLRU[...].func1"))
}
