package policyd

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
)

// TestRuleRefCitesThePattern: for a rule with a list, the history, the
// API view and the explanation cite the line of the pattern that matched,
// not the rule's first line.
func TestRuleRefCitesThePattern(t *testing.T) {
	t.Parallel()
	const text = `defaults: {level: may, upgrade: none}
destinations:
  - match:
      - partner-a.test
      - partner-b.test
    level: verify
    upgrade: none
`
	e, store := historyEngine(t, filepath.Join(t.TempDir(), "state.db"), text, &testlog.Buffer{})
	e.LookupTable(context.Background(), "tlspolicy", []byte("partner-b.test"))
	if v := e.View("partner-b.test"); v.Rule != "test.yaml:5" || !strings.Contains(v.Why, `test.yaml:5 destinations[0] match "partner-b.test"`) {
		t.Errorf("view: rule %q, why %q; want test.yaml:5", v.Rule, v.Why)
	}
	flushHistory(e)
	if got, err := store.Decisions("partner-b.test", 0); err != nil || len(got) != 1 || got[0].Rule != "test.yaml:5" {
		t.Errorf("history %+v, %v; want one record citing test.yaml:5", got, err)
	}
}
