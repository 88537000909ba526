package acceptance

import (
	"os"
	"path/filepath"
	"testing"
)

// rules is the policy every lookup test asks about.
const rules = `defaults:
  level: may
  upgrade: none
destinations:
  - match: example.org
    level: verify
  - match: .example.org
    level: encrypt
  - match: "[relay.example.net]:587"
    level: secure
  - match: bücher.example
    level: encrypt
  - match: legacy.example.com
    level: may
classes:
  - name: phi
    senders: ["@clinic.example.org"]
    level: verify
    on_fail: reject
`

// Listen blocks: every listener on loopback, or the socketmap on a socket
// file in the daemon's directory.
const (
	listenInet = `listen:
  socketmap: @SOCKETMAP@
  tcptable: @TCPTABLE@
  http: @HTTP@
`
	listenUnix = `listen:
  socketmap: unix:@DIR@/policy.sock
  tcptable: @TCPTABLE@
  http: @HTTP@
`
)

const (
	verify  = "verify protocols=>=TLSv1.2"
	encrypt = "encrypt protocols=>=TLSv1.2"
	secure  = "secure protocols=>=TLSv1.2"
	may     = "may"
)

// socketmapLookups are the answers of the rules above, by socketmap map.
var socketmapLookups = []struct {
	mapName   string
	stderrHas string // for fatal results
	lookups   []lookup
}{
	{mapName: "tlspolicy", lookups: []lookup{
		{key: "example.org", want: verify},
		{key: "EXAMPLE.ORG", want: verify},
		{key: "example.org.", want: verify},
		{key: "mx.example.org", want: encrypt},
		{key: "a.b.example.org", want: encrypt},
		// Postfix asks the parent form after a NOTFOUND; the rule written
		// for that form answers it.
		{key: ".example.org", want: encrypt},
		{key: "[relay.example.net]:587", want: secure},
		{key: "[RELAY.Example.NET]:587", want: secure},
		// Without the port it is another next hop, which no rule names.
		{key: "[relay.example.net]", want: may},
		{key: "bücher.example", want: encrypt},
		{key: "xn--bcher-kva.example", want: encrypt},
		// An explicit floor saves Postfix the parent-domain round trips...
		{key: "unmatched.test", want: may},
		// ...and a parent form no rule names is not found.
		{key: ".unmatched.test", res: notFound},
		{key: "legacy.example.com", want: may},
	}},
	{mapName: "phi", lookups: []lookup{
		// The stronger of the destination's answer and the class level.
		{key: "unmatched.test", want: verify},
		{key: "[relay.example.net]:587", want: secure},
	}},
	{mapName: "transport", lookups: []lookup{
		// No destination has a fallback route.
		{key: "example.org", res: notFound},
		{key: "unmatched.test", res: notFound},
	}},
	{mapName: "nosuch", stderrHas: "unknown map", lookups: []lookup{
		{key: "example.org", res: fatal},
	}},
}

// tcpLookups are the answers of the default map through tcp_table.
var tcpLookups = []lookup{
	{key: "example.org", want: verify},
	{key: "mx.example.org", want: encrypt},
	{key: "unmatched.test", want: may},
	{key: ".unmatched.test", res: notFound},
	// postmap sends the UTF-8 bytes %XX-encoded.
	{key: "bücher.example", want: encrypt},
}

func TestLookups(t *testing.T) {
	t.Parallel()
	t.Run("socketmap inet", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, listenInet+hermetic+rules)
		runSocketmapLookups(t, d)
	})
	t.Run("socketmap unix", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, listenUnix+hermetic+rules)
		sock := filepath.Join(d.dir, "policy.sock")
		fi, err := os.Stat(sock)
		switch {
		case err != nil:
			t.Errorf("socket file: %v", err)
		case fi.Mode()&os.ModeSocket == 0:
			t.Errorf("%s is %v, not a socket", sock, fi.Mode())
		case fi.Mode().Perm() != 0o666:
			t.Errorf("socket file mode %#o, want 0666 by default", fi.Mode().Perm())
		}
		runSocketmapLookups(t, d)
	})
	t.Run("tcp_table", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, listenInet+hermetic+rules)
		table := d.tcpTable(t)
		for _, l := range tcpLookups {
			t.Run(l.key, func(t *testing.T) {
				t.Parallel()
				checkLookup(t, table, l, "")
			})
		}
	})
}

// runSocketmapLookups asks every socketmap lookup of the table above, in
// parallel: the daemon serves many postmap processes at once.
func runSocketmapLookups(t *testing.T, d *daemon) {
	for _, m := range socketmapLookups {
		table := d.socketmap(t, m.mapName)
		for _, l := range m.lookups {
			t.Run(m.mapName+" "+l.key, func(t *testing.T) {
				t.Parallel()
				checkLookup(t, table, l, m.stderrHas)
			})
		}
	}
}
