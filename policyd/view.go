package policyd

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// DestinationView is what the daemon knows and answers about one
// destination, in the form the JSON API, the status page, the report and
// the -json output of the commands share: snake_case names, RFC 3339
// times, TLS versions as Postfix names them, durations in seconds.
type DestinationView struct {
	Destination   string           `json:"destination"`
	Map           string           `json:"map,omitempty"` // query -json: the map answered, when not the default
	Level         string           `json:"level"`         // the bare level answered, e.g. "verify"
	Answer        string           `json:"answer"`        // the whole policy text, e.g. "verify protocols=>=TLSv1.2"
	Floor         string           `json:"floor"`
	Rule          string           `json:"rule"` // "FILE:LINE" of the deciding rule, or ""
	Why           string           `json:"why"`
	ProbedAt      *time.Time       `json:"probed_at"`
	MX            []MXView         `json:"mx"`
	Pin           *PinView         `json:"pin"`
	MTASTS        *MTASTSView      `json:"mta_sts"`
	DANE          string           `json:"dane"`
	Downgrades30d int              `json:"downgrades_30d"`
	History       []state.Decision `json:"history,omitempty"`
}

// MXView is what the probe found at one MX host address.
type MXView struct {
	Host        string    `json:"host"`
	Address     string    `json:"address"`
	STARTTLS    bool      `json:"starttls"`
	TLSVersion  string    `json:"tls_version"`
	Cipher      string    `json:"cipher"`
	Certificate *CertView `json:"certificate"`
	Error       string    `json:"error"`
	// ProbedAt is when this host was probed: host results are shared by
	// the destinations a host serves, so it may be older than the
	// destination's probe.
	ProbedAt time.Time `json:"probed_at"`
}

// CertView is an MX host's certificate as the probe judged it.
type CertView struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	NotAfter  time.Time `json:"not_after"`
	Valid     bool      `json:"valid"`
	NameMatch bool      `json:"name_match"`
}

// PinView is a destination's pin.
type PinView struct {
	Level     string    `json:"level"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Expires   time.Time `json:"expires"`
	// Capped says how the rule's upgrade holds the answer below the pin
	// (null when it does not).
	Capped *PinCap `json:"capped"`
}

// MTASTSView is the MTA-STS policy in force for a destination.
type MTASTSView struct {
	Mode   string   `json:"mode"`
	ID     string   `json:"id"`
	MX     []string `json:"mx"`
	MaxAge int64    `json:"max_age"` // seconds
}

// Peek is the decision the default map would answer for destination now,
// from memory only: it never waits, probes or refreshes, so that looking
// at the daemon does not change what it does.
func (e *Engine) Peek(destination string) Decision { return e.PeekClass(destination, nil) }

// PeekClass is Peek for the map of a sender class.
func (e *Engine) PeekClass(destination string, class *rules.Class) Decision {
	pe := &Engine{pins: e.pins}
	if e.findings != nil {
		pe.findings = peekSource{e.findings}
	}
	rs := e.rules.Load()
	pe.rules.Store(rs)
	d := decideFromRules(rs, destination, class)
	if d.Found() && pe.consultsEvidence(rs, d.Rule, d.Key.Kind, d.Floor) {
		pe.raise(context.Background(), &d, d.Key, 0, false)
	}
	return d
}

// peekSource answers from the cache as it is: no waiting, no probe, no
// refresh.
type peekSource struct{ FindingsSource }

func (p peekSource) Get(t tlsprobe.Target) (Findings, bool) { return p.Peek(t) }
func (p peekSource) Lookup(_ context.Context, t tlsprobe.Target) (Findings, bool) {
	return p.Peek(t)
}
func (peekSource) Prefetch(tlsprobe.Target) {}

// View describes a destination as the default map answers it now, with
// the evidence behind the answer. It reads memory only.
func (e *Engine) View(destination string) DestinationView {
	return e.ViewOf(destination, e.Peek(destination))
}

// ViewOf describes a decision made for destination, with the evidence in
// memory behind it.
func (e *Engine) ViewOf(destination string, d Decision) DestinationView {
	v := DestinationView{Destination: destination, MX: []MXView{}, Why: d.Explain()}
	if d.Class != nil {
		v.Map = d.Class.Name
	}
	if d.Key.Kind != 0 {
		v.Destination = d.Key.String()
	}
	if d.Found() {
		v.Level, v.Answer, v.Floor = d.Level.String(), d.Answer.Text, d.Floor.String()
	}
	if d.Rule != nil {
		v.Rule = d.Rule.Ref()
	}
	t, err := Target(destination)
	if err == nil {
		if pin, ok := e.pinFor(t); ok {
			v.Pin = pinView(pin)
			if d.Found() {
				v.Pin.Capped = pinCap(d.rules, d.Rule, d.Key.String(), pinLevel(pin), d.Level)
			}
			if !pin.LastDowngrade.IsZero() && pin.LastDowngrade.After(e.clock().Add(-30*24*time.Hour)) {
				v.Downgrades30d = 1 // until the history, which counts them all, says more
			}
		}
		switch {
		case d.Probed():
			v.setFindings(*d.Findings)
		case e.findings != nil:
			if f, ok := e.findings.Peek(t); ok {
				v.setFindings(f)
			}
		}
	}
	return v
}

func pinView(p *state.Pin) *PinView {
	return &PinView{Level: p.Level, FirstSeen: p.FirstSeen, LastSeen: p.LastSeen, Expires: p.Expires}
}

// setFindings fills in what the probe and the published policies showed.
func (v *DestinationView) setFindings(f Findings) {
	if !f.Probe.ProbedAt.IsZero() {
		at := f.Probe.ProbedAt
		v.ProbedAt = &at
	}
	for _, h := range f.Probe.Hosts {
		v.MX = append(v.MX, mxView(h))
	}
	if f.STS != nil {
		mx := f.STS.MX
		if mx == nil {
			mx = []string{} // [] in JSON, not null, should a stored policy have none
		}
		v.MTASTS = &MTASTSView{Mode: f.STS.Mode.String(), ID: f.STS.ID, MX: mx, MaxAge: int64(f.STS.MaxAge / time.Second)}
	}
	v.DANE = f.DANE.String()
}

func mxView(h tlsprobe.HostReport) MXView {
	m := MXView{Host: h.Host, STARTTLS: h.STARTTLS, ProbedAt: h.ProbedAt}
	if h.Addr.IsValid() {
		m.Address = h.Addr.Addr().String()
	}
	if h.TLSVersion != 0 {
		m.TLSVersion = tlsprobe.VersionName(h.TLSVersion)
		m.Cipher = tls.CipherSuiteName(h.Cipher)
	}
	if !h.NotAfter.IsZero() {
		m.Certificate = &CertView{Subject: h.Subject, Issuer: h.Issuer, NotAfter: h.NotAfter, Valid: h.ChainValid, NameMatch: h.NameValid}
	}
	if h.Cause != tlsprobe.CauseNone {
		m.Error = h.Cause.String()
		if h.Detail != "" {
			m.Error += ": " + h.Detail
		}
	}
	return m
}
