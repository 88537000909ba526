package policyd

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// server, connection and prober started by a test must be shut down by it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
