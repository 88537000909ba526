package dane

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// lookup, a host check or a fake DNS server left running is a bug.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
