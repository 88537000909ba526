package mtasts

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// fetch, an HTTPS connection or a fake server left running is a bug. The
// cache uses the plain LRU, which starts no goroutine, so nothing is
// exempt.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
