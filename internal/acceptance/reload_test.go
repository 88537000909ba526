package acceptance

import (
	"fmt"
	"net/http"
	"testing"
)

// reloadRules returns a configuration in which example.org has exampleOrg
// and its subdomains have subdomains (any word, valid or not).
func reloadRules(exampleOrg, subdomains string) string {
	return listenInet + hermetic + fmt.Sprintf(`defaults:
  level: may
  upgrade: none
destinations:
  - match: example.org
    level: %s
  - match: .example.org
    level: %s
`, exampleOrg, subdomains)
}

const reloadsTotal = "tlspolicyd_config_reloads_total"

var (
	reloadSuccess = map[string]string{"result": "success"}
	reloadFailure = map[string]string{"result": "failure"}
)

func TestReload(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, reloadRules("encrypt", "encrypt"))
	table := d.socketmap(t, "tlspolicy")
	checkLookup(t, table, lookup{key: "example.org", want: encrypt}, "")
	if t.Failed() {
		t.FailNow()
	}

	// answers returns the two keys' answers as postmap shows them.
	answers := func() (string, string) {
		a, _, _ := postmap(t, "example.org", table)
		b, _, _ := postmap(t, "mx.example.org", table)
		return a, b
	}

	// A valid change takes effect, and counts as a successful reload.
	success0 := d.metric(t, reloadsTotal, reloadSuccess)
	failure0 := d.metric(t, reloadsTotal, reloadFailure)
	d.writeConfig(t, reloadRules("verify", "encrypt"))
	d.reload(t)
	eventually(t, pollTimeout, "valid reload", func() (bool, string) {
		got, _ := answers()
		s := d.metric(t, reloadsTotal, reloadSuccess)
		return got == verify && s > success0,
			fmt.Sprintf("example.org -> %q (want %q), %s%v = %v (was %v)", got, verify, reloadsTotal, reloadSuccess, s, success0)
	})
	success1 := d.metric(t, reloadsTotal, reloadSuccess)
	if f := d.metric(t, reloadsTotal, reloadFailure); f != failure0 {
		t.Errorf("a valid reload moved %s%v from %v to %v", reloadsTotal, reloadFailure, failure0, f)
	}

	// An invalid file is refused as a whole: the valid-looking change to
	// example.org in it must not take effect either.
	d.writeConfig(t, reloadRules("may", "verifyy"))
	d.reload(t)
	eventually(t, pollTimeout, "invalid reload counted", func() (bool, string) {
		f := d.metric(t, reloadsTotal, reloadFailure)
		return f > failure0, fmt.Sprintf("%s%v = %v (was %v)", reloadsTotal, reloadFailure, f, failure0)
	})
	if a, b := answers(); a != verify || b != encrypt {
		t.Errorf("after a refused reload: example.org -> %q, mx.example.org -> %q; want the old rules: %q, %q", a, b, verify, encrypt)
	}
	if s := d.metric(t, reloadsTotal, reloadSuccess); s != success1 {
		t.Errorf("an invalid reload moved %s%v from %v to %v", reloadsTotal, reloadSuccess, success1, s)
	}
	if code, err := d.healthz(); err != nil || code != http.StatusOK {
		t.Errorf("after a refused reload /healthz: %d, %v; want 200", code, err)
	}

	// And the daemon still reloads once the file is fixed.
	d.writeConfig(t, reloadRules("secure", "verify"))
	d.reload(t)
	eventually(t, pollTimeout, "reload after a refused one", func() (bool, string) {
		a, b := answers()
		s := d.metric(t, reloadsTotal, reloadSuccess)
		return a == secure && b == verify && s > success1,
			fmt.Sprintf("example.org -> %q (want %q), mx.example.org -> %q (want %q), %s%v = %v (was %v)",
				a, secure, b, verify, reloadsTotal, reloadSuccess, s, success1)
	})
}
