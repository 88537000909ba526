package acceptance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromiumPath is where Debian's chromium package (.ci/install-deps)
// installs the browser.
const chromiumPath = "/usr/bin/chromium"

// browserLimit bounds the whole browser test, from starting Chromium to
// closing it; browserStep bounds each step (a page load, a click, a
// script).
const (
	browserLimit = 60 * time.Second
	browserStep  = 10 * time.Second
)

// TestStatusPageInBrowser opens the status page in headless Chromium: the
// list shows the destinations the daemon answered for; typing in the
// search box hides the rows that do not match, in the page (no new page
// load); clicking a column header sorts the rows by it; clicking a
// destination opens its page. A JavaScript exception or a console error
// fails the test.
func TestStatusPageInBrowser(t *testing.T) {
	t.Parallel()
	chromium := findChromium(t)
	d := startDaemon(t, listenInet+hermetic+rules)
	rc := newRawConn(t, d, "socketmap", "socketmap")
	known := map[string]string{ // destination -> level
		"example.org":        "verify",
		"legacy.example.com": "may",
		"mx.example.org":     "encrypt",
		"unmatched.test":     "may",
	}
	for dest, level := range known {
		want := "OK " + level
		if level != "may" {
			want += " protocols=>=TLSv1.2"
		}
		rc.ask("tlspolicy", dest, want)
	}
	// The daemon knows a destination once its first answer is recorded.
	eventually(t, pollTimeout, "the destinations known", func() (bool, string) {
		var list struct {
			Destinations []struct {
				Destination string `json:"destination"`
			} `json:"destinations"`
		}
		json.Unmarshal([]byte(d.get(t, "/api/v1/destinations", nil)), &list)
		return len(list.Destinations) == len(known), fmt.Sprintf("%+v", list.Destinations)
	})
	base := "http://" + d.http

	ctx, cancel := context.WithTimeout(context.Background(), browserLimit)
	defer cancel()
	b := startBrowser(t, ctx, chromium)
	defer b.close(t)
	tab := b.tab

	// Each step has a timeout of its own, so that a missing element fails
	// the test at once rather than at browserLimit.
	step := func() context.Context {
		ctx, cancel := context.WithTimeout(tab, browserStep)
		t.Cleanup(cancel)
		return ctx
	}
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(step(), steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(what, js string) []string {
		t.Helper()
		v, err := chromedp.Run(step(), chromedp.Evaluate[[]string](js))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	const (
		visibleRows = `Array.from(document.querySelectorAll("#dest-table tbody tr")).filter(r => !r.hidden).map(r => r.cells[0].textContent.trim())`
		hiddenRows  = `Array.from(document.querySelectorAll("#dest-table tbody tr")).filter(r => r.hidden).map(r => r.cells[0].textContent.trim())`
		levelColumn = `Array.from(document.querySelectorAll("#dest-table tbody tr")).map(r => r.cells[1].textContent.trim())`
		orderShown  = `Array.from(document.querySelectorAll("#dest-table tbody tr")).map(r => r.cells[0].textContent.trim())`
	)

	// The list, in the server's order (by destination).
	run("opening /", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("dest-table")))
	listed := eval("reading the list", orderShown)
	want := slices.Sorted(maps.Keys(known))
	if !slices.Equal(listed, want) {
		t.Fatalf("the status page lists %q, want %q", listed, want)
	}

	// Typing filters the rows in the page: the marker set on this
	// document survives, which a page load would have wiped out.
	run("typing in the search box",
		chromedp.Evaluate[chromedp.Void](`window.noPageLoad = "still this document"`),
		chromedp.SendKeys(chromedp.ID("q"), "example.org"))
	shown, hidden := eval("reading the filtered list", visibleRows), eval("reading the hidden rows", hiddenRows)
	if !slices.Equal(shown, []string{"example.org", "mx.example.org"}) || !slices.Equal(hidden, []string{"legacy.example.com", "unmatched.test"}) {
		t.Errorf("after typing %q: rows shown %q, hidden %q; want example.org and mx.example.org shown, the others hidden", "example.org", shown, hidden)
	}
	if got := eval("checking for a page load", `[String(window.noPageLoad), location.pathname + location.search]`); !slices.Equal(got, []string{"still this document", "/"}) {
		t.Errorf("typing in the search box loaded a page: marker and location %q", got)
	}
	// Emptying the box shows every row again.
	run("emptying the search box", chromedp.Evaluate[chromedp.Void](
		`(() => { const q = document.getElementById("q"); q.value = ""; q.dispatchEvent(new Event("input")); })()`))
	if shown := eval("reading the list", visibleRows); !slices.Equal(shown, want) {
		t.Errorf("with the search box empty: rows shown %q, want all of %q", shown, want)
	}

	// Clicking the level header sorts by level, then again the other way.
	levelHeader := chromedp.CSS("#dest-table thead th:nth-child(2)")
	run("clicking the level header", chromedp.Click(levelHeader))
	up, upOrder := eval("reading the levels", levelColumn), eval("reading the order", orderShown)
	run("clicking the level header again", chromedp.Click(levelHeader))
	down, downOrder := eval("reading the levels", levelColumn), eval("reading the order", orderShown)
	if want := []string{"encrypt", "may", "may", "verify"}; !slices.Equal(up, want) || len(upOrder) == 0 || upOrder[0] != "mx.example.org" {
		t.Errorf("after a click on the level header: levels %q (order %q), want %q, starting with mx.example.org", up, upOrder, want)
	}
	if want := []string{"verify", "may", "may", "encrypt"}; !slices.Equal(down, want) || len(downOrder) == 0 || downOrder[0] != "example.org" {
		t.Errorf("after a second click on the level header: levels %q (order %q), want %q, starting with example.org", down, downOrder, want)
	}
	if got := eval("checking for a page load", `[String(window.noPageLoad)]`); !slices.Equal(got, []string{"still this document"}) {
		t.Errorf("sorting loaded a page")
	}

	// A destination's link opens its page.
	if _, err := chromedp.Run(step(), chromedp.WaitEvent(page.LoadEventFired, nil,
		chromedp.Click(chromedp.CSS(`#dest-table a[href="/d/mx.example.org"]`)))); err != nil {
		t.Fatalf("clicking mx.example.org: %v", err)
	}
	got := eval("reading the destination page",
		`[location.pathname, document.querySelector("h1") ? document.querySelector("h1").textContent.trim() : "", String(window.noPageLoad)]`)
	if !slices.Equal(got, []string{"/d/mx.example.org", "mx.example.org", "undefined"}) {
		t.Errorf("after clicking mx.example.org: location, heading and marker %q, want the page /d/mx.example.org headed mx.example.org, newly loaded", got)
	}
	answers := eval("reading the answers", `Array.from(document.querySelectorAll("table tbody tr")).map(r => Array.from(r.cells).map(c => c.textContent.trim()).slice(0, 2).join(" -> "))`)
	if !slices.Contains(answers, "tlspolicy -> "+encrypt) {
		t.Errorf("the page of mx.example.org: rows %q, want tlspolicy answering %q", answers, encrypt)
	}

	for _, e := range b.errors() {
		t.Errorf("the browser reported: %s", e)
	}
}

// findChromium returns Chromium's path, and fails the test (like the
// other acceptance tests without their peers) if it is not installed.
func findChromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return chromiumPath
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatalf("Chromium not found at %s or on PATH: the browser test needs it; run .ci/install-deps", chromiumPath)
	return ""
}

// browser is a headless Chromium with one tab, and what its pages
// reported: uncaught exceptions, console errors and errors in the
// browser's log.
type browser struct {
	tab     context.Context
	dataDir string
	cancel  []context.CancelFunc

	mu       sync.Mutex
	problems []string
}

// startBrowser starts Chromium on a user data directory of its own, for
// the loopback only: no sandbox (the tests run as root), no GPU, and no
// background traffic of its own (updates, sync, QUIC), which on a machine
// without a network only floods refused connections. Even so it looks up
// names such as clients2.google.com; the host resolver rules make every
// name unknown (the daemon is reached by address), so that it asks no DNS
// server.
func startBrowser(t *testing.T, ctx context.Context, chromium string) *browser {
	t.Helper()
	dataDir, err := os.MkdirTemp("", "tlspolicyd-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{dataDir: dataDir}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.UserDataDir(dataDir),
		chromedp.Env("XDG_CONFIG_HOME="+dataDir, "XDG_CACHE_HOME="+dataDir),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	tab, tcancel := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	b.tab, b.cancel = tab, []context.CancelFunc{tcancel, acancel}
	// Start the browser and open the tab now, so that a failure to start
	// says so.
	if err := chromedp.Do(tab); err != nil {
		b.close(t)
		t.Fatalf("starting %s: %v", chromium, err)
	}
	return b
}

// listen runs in the tab's event loop: it only notes problems.
func (b *browser) listen(ev any) {
	var problem string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		problem = "uncaught exception: " + exceptionText(ev.ExceptionDetails)
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				if a.Value != nil {
					args = append(args, string(a.Value))
				} else {
					args = append(args, a.Description)
				}
			}
			problem = fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " "))
		}
	case *log.EventEntryAdded:
		// The browser's own errors about the page: a blocked script or
		// style (Content-Security-Policy), a failed request. The page
		// has no icon, and the browser asks for one anyway.
		if e := ev.Entry; e.Level == log.EntryLevelError && !strings.HasSuffix(e.URL, "/favicon.ico") {
			problem = fmt.Sprintf("%s error: %s (%s)", e.Source, e.Text, e.URL)
		}
	}
	if problem != "" {
		b.mu.Lock()
		b.problems = append(b.problems, problem)
		b.mu.Unlock()
	}
}

func exceptionText(d *runtime.ExceptionDetails) string {
	if d == nil {
		return "?"
	}
	text := d.Text
	if d.Exception != nil && d.Exception.Description != "" {
		text += " " + d.Exception.Description
	}
	return fmt.Sprintf("%s at %s:%d:%d", text, d.URL, d.LineNumber+1, d.ColumnNumber+1)
}

func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.problems)
}

// close closes the tab and the browser and waits for it to exit; any of
// its processes still running after that is an error (and is killed), and
// its user data directory is removed.
func (b *browser) close(t *testing.T) {
	t.Helper()
	for _, cancel := range b.cancel {
		cancel()
	}
	if left := processesUsing(b.dataDir); len(left) > 0 {
		t.Errorf("Chromium processes %v still running after the browser closed; killing them", left)
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := os.RemoveAll(b.dataDir); err != nil {
		t.Errorf("removing Chromium's user data directory: %v", err)
	}
}

// processesUsing returns the processes whose command line has
// --user-data-dir=dir: Chromium passes it to every process it starts.
func processesUsing(dir string) []int {
	want := []byte("--user-data-dir=" + dir)
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if slices.ContainsFunc(bytes.Split(cmdline, []byte{0}), func(arg []byte) bool { return bytes.Equal(arg, want) }) {
			pids = append(pids, pid)
		}
	}
	return pids
}
