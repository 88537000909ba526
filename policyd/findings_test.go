package policyd

import (
	"context"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

const publishedRules = `
dns: {servers: ["127.0.0.1:53"]}
dane: {enabled: true}
mtasts: {enabled: true}
probe: {wait: 10ms}
defaults: {level: may, upgrade: verify}
destinations:
  - match: optout.test
    mtasts: false
    dane: false
  - match: floor-verify.test
    level: verify
  - match: floor-daneonly.test
    level: dane-only
`

func TestPublishedPolicies(t *testing.T) {
	t.Parallel()
	enforce := &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeEnforce, MX: []string{"mx1.example.com", "*.example.net"}, MaxAge: time.Hour, ID: "20261129"}
	testing := &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeTesting, MX: []string{"mx1.example.com"}, MaxAge: time.Hour, ID: "1"}
	verified := tlsprobe.Report{Capability: tlsprobe.CapVerify}
	plain := tlsprobe.Report{Capability: tlsprobe.CapNone, Cause: tlsprobe.CauseNoSTARTTLS}
	ev := &fakeFindings{findings: map[string]Findings{
		"daneonly.test":       {Probe: verified, DANE: dane.DANEOnly},
		"mixed.test":          {Probe: verified, DANE: dane.MixedDANE},
		"broken.test":         {Probe: plain, DANE: dane.EncryptOnly},
		"danetemp.test":       {Probe: verified, DANE: dane.TempFail},
		"sts.test":            {Probe: plain, STS: enforce},
		"ststesting.test":     {Probe: verified, STS: testing},
		"both.test":           {Probe: verified, DANE: dane.DANEOnly, STS: enforce},
		"optout.test":         {Probe: verified, DANE: dane.DANEOnly, STS: enforce},
		"floor-verify.test":   {Probe: verified, DANE: dane.MixedDANE},
		"floor-daneonly.test": {Probe: plain, STS: enforce},
		"[sts.test]":          {Probe: verified, STS: enforce},
	}}
	e := NewEngine(mustLoad(t, publishedRules), ev)
	const stsAnswer = "secure match=mx1.example.com:.example.net servername=hostname protocols=>=TLSv1.2"
	for key, want := range map[string]string{
		"daneonly.test":       "dane-only protocols=>=TLSv1.2",
		"mixed.test":          "dane protocols=>=TLSv1.2",
		"broken.test":         "encrypt protocols=>=TLSv1.2",   // TLSA present, none usable: TLS, unauthenticated
		"danetemp.test":       "verify protocols=>=TLSv1.2",    // a failed DANE lookup gives nothing: probes decide
		"sts.test":            stsAnswer,                       // enforce, whatever the probe saw
		"ststesting.test":     "verify protocols=>=TLSv1.2",    // testing changes nothing
		"both.test":           "dane-only protocols=>=TLSv1.2", // DANE before MTA-STS (RFC 8461 section 2)
		"optout.test":         "verify protocols=>=TLSv1.2",    // the rule opts out of both sources
		"floor-verify.test":   "verify protocols=>=TLSv1.2",    // opportunistic dane never replaces verify
		"floor-daneonly.test": "dane-only protocols=>=TLSv1.2", // nothing lowers the floor
		"[sts.test]":          "verify protocols=>=TLSv1.2",    // MTA-STS is for recipient domains only
	} {
		if got := e.LookupTable(context.Background(), rules.MapTLSPolicy, []byte(key)); got.Text != want {
			t.Errorf("%s = %q, want %q", key, got.Text, want)
		}
	}
	d := e.Decide(context.Background(), "sts.test", "", 0)
	if d.Published == "" || d.Level != rules.LevelSecure {
		t.Errorf("decision %+v does not say MTA-STS decided", d)
	}
}

func TestRenderSTSForOlderPostfix(t *testing.T) {
	t.Parallel()
	pol := mtasts.Policy{Mode: mtasts.ModeEnforce, MX: []string{"mx.example.com"}}
	for _, tt := range []struct {
		v    rules.Version
		want string
	}{
		{rules.Version{Major: 3, Minor: 7}, "secure match=mx.example.com servername=hostname protocols=>=TLSv1.2"},
		{rules.Version{Major: 3, Minor: 5}, "secure match=mx.example.com servername=hostname protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"},
		{rules.Version{Major: 3, Minor: 3}, "secure match=mx.example.com protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"}, // no servername= before 3.4
	} {
		if got := renderSTS(pol, "TLSv1.2", tt.v); got != tt.want {
			t.Errorf("Postfix %s: %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestFindingsFailed(t *testing.T) {
	t.Parallel()
	failed := tlsprobe.Report{Cause: tlsprobe.CauseDNS}
	for _, tt := range []struct {
		f    Findings
		want bool
	}{
		{Findings{Probe: failed}, true},
		{Findings{Probe: failed, DANE: dane.TempFail}, true},
		{Findings{Probe: failed, DANE: dane.DANEOnly}, false},
		{Findings{Probe: failed, STS: &mtasts.Policy{Mode: mtasts.ModeEnforce}}, false},
		{Findings{Probe: tlsprobe.Report{Capability: tlsprobe.CapNone}}, false},
	} {
		if got := tt.f.Failed(); got != tt.want {
			t.Errorf("%+v.Failed() = %v, want %v", tt.f, got, tt.want)
		}
	}
}
