package acceptance

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The shipped Prometheus rules and their unit tests, and the Grafana
// dashboard, relative to the module root (as .ci/run names them). go test
// runs in the package directory, two below the root.
const (
	moduleRoot     = "../.."
	alertRules     = "contrib/prometheus/alerts.yml"
	alertRuleTests = "contrib/prometheus/alerts_test.yml"
	dashboard      = "contrib/grafana/tlspolicyd.json"
	promtoolLimit  = 60 * time.Second
)

// TestAlertRules runs what .ci/run runs on the alerting rules: promtool
// check rules (syntax, templates, lint) and promtool test rules (each alert
// fires, and does not, on the series of alerts_test.yml).
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool := findPromtool(t)
	for _, args := range [][]string{
		{"check", "rules", alertRules},
		{"test", "rules", alertRuleTests},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), promtoolLimit)
			defer cancel()
			cmd := exec.CommandContext(ctx, promtool, args...)
			cmd.Dir = moduleRoot
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("promtool %s: no result within %v\n%s", strings.Join(args, " "), promtoolLimit, out)
			}
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// findPromtool looks for promtool on PATH and then in /usr/bin, where
// Debian's prometheus package puts it.
func findPromtool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	const usrBin = "/usr/bin/promtool"
	if _, err := os.Stat(usrBin); err == nil {
		return usrBin
	}
	t.Fatal("promtool not found on PATH or in /usr/bin: the alerting rules are checked " +
		"with Prometheus's promtool (Debian package prometheus); run .ci/install-deps")
	return ""
}
