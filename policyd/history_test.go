package policyd

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// historyEngine is an engine over text whose history goes to the store at
// path, recorded (and logged to log) until the test ends.
func historyEngine(t *testing.T, path, text string, log *testlog.Buffer) (*Engine, *state.Bolt) {
	t.Helper()
	store, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(mustLoad(t, text), nil)
	e.history = newRecorder(store, func() time.Duration { return 24 * time.Hour },
		func() rules.DecisionLog { return e.Rules().Settings.LogDecisions }, time.Now, log.Logger(), prometheus.NewRegistry())
	e.history.start()
	t.Cleanup(func() {
		e.history.close()
		store.Close()
	})
	return e, store
}

// flushHistory stops the recorder, which writes what it holds.
func flushHistory(e *Engine) { e.history.close() }

func TestHistoryRecordsFirstAnswersAndChanges(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	const text = "destinations:\n  - {match: partner.test, level: encrypt}\n"
	log := &testlog.Buffer{}
	e, store := historyEngine(t, path, text, log)
	ctx := context.Background()
	for range 3 {
		e.LookupTable(ctx, "tlspolicy", []byte("Partner.TEST"))
	}
	e.LookupTable(ctx, "tlspolicy", []byte(".parent.test")) // no destination: not recorded
	e.SetRules(mustLoad(t, "destinations:\n  - {match: partner.test, level: verify}\n"))
	e.LookupTable(ctx, "tlspolicy", []byte("partner.test"))
	flushHistory(e)
	got, err := store.Decisions("partner.test", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d records, want the first answer and one change: %+v", len(got), got)
	}
	if got[0].Answer != "verify protocols=>=TLSv1.2" || got[0].Previous != "encrypt protocols=>=TLSv1.2" ||
		got[1].Previous != "" || got[1].Rule != "test.yaml:2" || got[0].Map != "tlspolicy" {
		t.Errorf("records %+v", got)
	}
	if n := store.CountDecisions(); n != 2 {
		t.Errorf("%d records stored, want 2", n)
	}
	if !strings.Contains(log.String(), `msg="decision changed" destination=partner.test map=tlspolicy answer="verify protocols=>=TLSv1.2" previous="encrypt protocols=>=TLSv1.2"`) {
		t.Errorf("the change is not logged as a decision record:\n%s", log)
	}
	if testutil.ToFloat64(e.history.recorded) != 2 || testutil.ToFloat64(e.history.q.dropped) != 0 {
		t.Errorf("records counted %v, dropped %v", testutil.ToFloat64(e.history.recorded), testutil.ToFloat64(e.history.q.dropped))
	}

	// After a restart the recorder knows the last answer from the store:
	// the same answer again is no change.
	store.Close()
	e2, store2 := historyEngine(t, path, "destinations:\n  - {match: partner.test, level: verify}\n", &testlog.Buffer{})
	e2.LookupTable(ctx, "tlspolicy", []byte("partner.test"))
	flushHistory(e2)
	if got, _ := store2.Decisions("partner.test", 0); len(got) != 2 {
		t.Errorf("after a restart, the same answer was recorded again: %+v", got)
	}
}

func TestHistoryRecordsRefusalsOnce(t *testing.T) {
	t.Parallel()
	e, store := historyEngine(t, filepath.Join(t.TempDir(), "state.db"), rcptRules, &testlog.Buffer{})
	e.findings = rcptEvidence()
	s := RcptService{Engine: e}
	for range 3 {
		if a := s.RcptAction(context.Background(), "doctor@clinic.test", "a@plain.test"); a[:6] != "REJECT" {
			t.Fatalf("action %q", a)
		}
	}
	s.RcptAction(context.Background(), "doctor@clinic.test", "a@good.test") // DUNNO: not recorded
	flushHistory(e)
	var rcpt []state.Decision
	for _, dest := range []string{"plain.test", "good.test"} {
		got, _ := store.Decisions(dest, 0)
		for _, d := range got {
			if d.Map == MapRcpt {
				rcpt = append(rcpt, d)
			}
		}
	}
	if len(rcpt) != 1 || rcpt[0].Destination != "plain.test" || rcpt[0].Evidence.Sender != "doctor@clinic.test" {
		t.Errorf("RCPT records %+v, want one refusal of plain.test", rcpt)
	}
}

func TestRecorderChangedIsExact(t *testing.T) {
	h := newRecorder(nil, nil, nil, time.Now, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	steps := []struct {
		mapName, key, answer string
		want                 bool
	}{
		{"tlspolicy", "a.test", "may", true},
		{"tlspolicy", "a.test", "may", false},
		{"phi", "a.test", "may", true}, // another map
		{"tlspolicy", "b.test", "may", true},
		{"tlspolicy", "a.test", "encrypt", true},
		{"tlspolicy", "a.test", "encrypt", false},
	}
	for _, s := range steps {
		if got := h.changed(s.mapName, []byte(s.key), s.answer); got != s.want {
			t.Errorf("changed(%s, %s, %s) = %v, want %v", s.mapName, s.key, s.answer, got, s.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { h.changed("tlspolicy", []byte("a.test"), "encrypt") }); n != 0 {
		t.Errorf("an unchanged answer costs %v allocations, want 0", n)
	}
	// The whole lookup, with the history on: nothing allocated once the
	// answer is recorded.
	e := NewEngine(mustLoad(t, testRules), nil)
	e.history = h
	key := []byte("Mixed.Case.Example")
	e.LookupTable(context.Background(), "tlspolicy", key)
	if n := testing.AllocsPerRun(100, func() { e.LookupTable(context.Background(), "tlspolicy", key) }); n != 0 {
		t.Errorf("a lookup with the history on costs %v allocations, want 0", n)
	}
}

func TestTokenGuardsEverythingButHealthAndMetrics(t *testing.T) {
	t.Parallel()
	d := knownWorld(t, 1)
	rs := mustLoad(t, "")
	rs.Settings.HTTPToken = "s3cret"
	d.Engine.SetRules(rs)
	h := d.httpHandler()
	for _, tc := range []struct {
		path, auth string
		user, pw   string
		want       int
	}{
		{"/", "", "", "", http.StatusUnauthorized},
		{"/api/v1/destinations", "Bearer wrong", "", "", http.StatusUnauthorized},
		{"/api/v1/destinations", "Bearer s3cret", "", "", http.StatusOK},
		{"/d/d000000.test", "", "postmaster", "s3cret", http.StatusOK},
		{"/admin/pins", "", "", "", http.StatusUnauthorized},
		{"/healthz", "", "", "", http.StatusOK},
		{"/metrics", "", "", "", http.StatusOK},
	} {
		req := httptest.NewRequest(http.MethodGet, tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		if tc.pw != "" {
			req.SetBasicAuth(tc.user, tc.pw)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("GET %s (%q %q) = %d, want %d", tc.path, tc.auth, tc.pw, rec.Code, tc.want)
		}
		if rec.Code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("GET %s: 401 without WWW-Authenticate, so a browser cannot ask for the token", tc.path)
		}
	}
}
