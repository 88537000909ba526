package dnsclient

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// query left reading from a server that never answers is a bug.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
