package acceptance

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The environment every test shares, set once by TestMain before any test
// runs and read-only afterwards.
var (
	daemonBin   string   // the tlspolicyd binary built for this run
	daemonEnv   []string // the environment of every tlspolicyd process
	postmapBin  string   // Postfix's postmap
	postfixConf string   // a directory holding the main.cf postmap needs
	// noDaemon is a loopback address where connections are accepted and
	// closed at once, for the listen.http of configurations no daemon
	// serves: the commands ask a daemon there first, and none may answer
	// (not even another test's daemon, which can never bind it).
	noDaemon string
)

// mainCF is the smallest main.cf with which postmap -q works on a machine
// where Postfix was installed with "No configuration". postmap only needs
// the file to exist (an empty one works with Postfix 3.7); the directories
// are set so that it never depends on the system's /var/spool/postfix, and
// the compatibility level keeps it from logging backwards-compatibility
// warnings. %[1]s is a temporary directory.
const mainCF = `compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
`

func TestMain(m *testing.M) {
	if spec := os.Getenv(latencyClientEnv); spec != "" {
		os.Exit(latencyClient(spec)) // a benchmark's measuring client: see ruleOnlyLatencies
	}
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "tlspolicyd-acceptance-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "acceptance:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if err := setUp(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL acceptance:", err)
		return 1
	}
	return m.Run()
}

func setUp(tmp string) error {
	p, err := findPostmap()
	if err != nil {
		return err
	}
	postmapBin = p

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	noDaemon = l.Addr().String()
	go func() { // until the process ends
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	postfixConf = filepath.Join(tmp, "postfix")
	for _, d := range []string{postfixConf, filepath.Join(tmp, "queue"), filepath.Join(tmp, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(postfixConf, "main.cf"), fmt.Appendf(nil, mainCF, tmp), 0o644); err != nil {
		return err
	}

	// go test runs in the package directory; the module root is two up.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	daemonBin = filepath.Join(tmp, "tlspolicyd")
	// The daemon is built with the race detector, so that its own data
	// races fail the tests that run it (see raceReports). Benchmarks
	// measure the daemon as shipped, so a run with -bench builds it
	// without.
	args := []string{"build", "-o", daemonBin}
	if flag.Lookup("test.bench").Value.String() == "" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "github.com/tlspolicyd/tlspolicyd")...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the daemon (go %s): %v\n%s", strings.Join(args, " "), err, out)
	}
	// A -race binary sleeps a second before it exits (atexit_sleep_ms,
	// to catch races with threads still running), which would add a second
	// to every command a test runs and to every daemon it stops. Options
	// already in GORACE come after, and win.
	daemonEnv = append(os.Environ(), "GORACE="+strings.TrimSpace("atexit_sleep_ms=0 "+os.Getenv("GORACE")))
	return nil
}

// raceMarker starts every report of the race detector, which a binary
// built with -race writes to its standard error (and then, by default,
// goes on; at exit its status is 66 instead of 0).
const raceMarker = "WARNING: DATA RACE"

// raceReports returns the race detector's reports in output (a daemon's
// log, a command's output), "" if there are none. Each report is framed by
// lines of "=" signs.
func raceReports(output string) string {
	if !strings.Contains(output, raceMarker) {
		return ""
	}
	var reports []string
	for _, block := range strings.Split(output, "==================\n") {
		if strings.HasPrefix(block, raceMarker) {
			reports = append(reports, block)
		}
	}
	if len(reports) == 0 { // framed differently: show it all
		return output
	}
	return strings.Join(reports, "==================\n")
}

// checkRaces fails the test if output, from a tlspolicyd command that has
// ended, holds race detector reports, and shows them.
func checkRaces(t *testing.T, what, output string) {
	t.Helper()
	if r := raceReports(output); r != "" {
		t.Errorf("%s: the race detector reported a data race in tlspolicyd:\n%s", what, r)
	}
}

// findPostmap looks for postmap on PATH and then in /usr/sbin, which is
// often not on an unprivileged PATH.
func findPostmap() (string, error) {
	if p, err := exec.LookPath("postmap"); err == nil {
		return p, nil
	}
	const sbin = "/usr/sbin/postmap"
	if _, err := os.Stat(sbin); err == nil {
		return sbin, nil
	}
	return "", errors.New("postmap (Postfix) not found on PATH or in /usr/sbin: " +
		"the acceptance tests need the real Postfix; run .ci/install-deps")
}
