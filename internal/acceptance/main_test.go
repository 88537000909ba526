package acceptance

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The environment every test shares, set once by TestMain before any test
// runs and read-only afterwards.
var (
	daemonBin   string // the tlspolicyd binary built for this run
	postmapBin  string // Postfix's postmap
	postfixConf string // a directory holding the main.cf postmap needs
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
	build := exec.Command("go", "build", "-o", daemonBin, "github.com/tlspolicyd/tlspolicyd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the daemon: %v\n%s", err, out)
	}
	return nil
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
