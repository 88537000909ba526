package wire

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// server, connection and prober started by a test must be shut down by it.
// The one exception is the expiry goroutine that golang-lru's expirable LRU
// starts per cache and never stops (the library has no Close); the daemon
// creates its cache once, so it lives as long as the process.
//
// Started with helperDialEnv set, the test binary is instead a client that
// a test runs as another user (see runAsClient).
func TestMain(m *testing.M) {
	if path := os.Getenv(helperDialEnv); path != "" {
		os.Exit(holdConns(path, os.Getenv(helperConnsEnv)))
	}
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/golang-lru/v2/expirable.NewLRU[...].func1"))
}

// The helper client's settings: the unix socket to dial, and how many
// connections to open.
const (
	helperDialEnv  = "WIRE_TEST_HELPER_DIAL"
	helperConnsEnv = "WIRE_TEST_HELPER_CONNS"
)

// holdConns opens n connections to the unix socket at path, prints "ready",
// and holds them, idle, until its standard input ends.
func holdConns(path, n string) int {
	count, err := strconv.Atoi(n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	for range count {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		defer c.Close()
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n') // until EOF
	return 0
}
