package policyd

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// How Findings are kept in the state store: a version byte, then every
// field in the order of the struct declarations, integers as varints,
// strings and byte strings with their length first, times as Unix seconds
// and nanoseconds (so that certificate expiries past 2262 and the zero
// time hold), and a count before each list. It takes a third of the space
// of the JSON the store held before and decodes several times faster
// (BenchmarkFindingsDecode), which is what a start with a million stored
// destinations needs.
//
// A field added to Findings or to what it holds must be added here, with a
// new version; TestFindingsCodecKeepsEveryField fails until it is.
//
// Version 2 added each host's ProbedAt (host results are shared between
// destinations, so a host may have been probed before its destination);
// a version 1 record's hosts take their destination's time.
const (
	findingsCodecV1 byte = 1
	findingsCodecV2 byte = 2
)

// errFindingsCodec is the error for a record that does not decode.
var errFindingsCodec = errors.New("findings record does not decode")

// MarshalBinary encodes f for the state store.
func (f Findings) MarshalBinary() ([]byte, error) {
	e := encoder{b: make([]byte, 0, 256)}
	e.b = append(e.b, findingsCodecV2)
	p := f.Probe
	e.str(p.Target.Name)
	e.bool(p.Target.Direct)
	e.int(int64(p.Target.Port))
	e.uint(uint64(len(p.Hosts)))
	for _, h := range p.Hosts {
		e.str(h.Host)
		e.uint(uint64(h.Preference))
		addr, err := h.Addr.AppendBinary(e.scratch[:0])
		if err != nil {
			return nil, err
		}
		e.bytes(addr)
		e.bool(h.STARTTLS)
		e.uint(uint64(h.TLSVersion))
		e.uint(uint64(h.Cipher))
		e.bool(h.ChainValid)
		e.bool(h.NameValid)
		e.bool(h.SelfSigned)
		e.time(h.NotAfter)
		e.str(h.Subject)
		e.str(h.Issuer)
		e.uint(uint64(h.Capability))
		e.uint(uint64(h.Cause))
		e.str(h.Detail)
		e.int(int64(h.Duration))
		e.time(h.ProbedAt)
	}
	e.uint(uint64(p.Capability))
	e.uint(uint64(p.Cause))
	e.str(p.Detail)
	e.time(p.ProbedAt)
	e.int(int64(p.Duration))
	e.uint(uint64(f.DANE))
	e.str(f.DANEDetail)
	e.bool(f.STS != nil)
	if s := f.STS; s != nil {
		e.str(s.Version)
		e.uint(uint64(s.Mode))
		e.strs(s.MX)
		e.int(int64(s.MaxAge))
		e.str(s.ID)
		e.time(s.FetchedAt)
		e.strs(s.Lines)
	}
	e.str(f.STSNote)
	e.time(f.RecheckAt)
	return e.b, nil
}

// UnmarshalBinary decodes what MarshalBinary encoded. Strings that recur
// across destinations (certificate issuers, notes) are shared when f is
// decoded by a decoder that interns; see decodeFindings.
func (f *Findings) UnmarshalBinary(b []byte) error {
	return decodeFindings(b, f, nil)
}

// decodeFindings decodes b into f, sharing the strings of the fields that
// take few values through intern (nil: no sharing).
func decodeFindings(b []byte, f *Findings, intern map[string]string) error {
	if len(b) == 0 || b[0] != findingsCodecV1 && b[0] != findingsCodecV2 {
		return fmt.Errorf("%w: unknown version", errFindingsCodec)
	}
	version := b[0]
	d := decoder{b: b[1:], intern: intern}
	*f = Findings{}
	p := &f.Probe
	p.Target.Name = d.str()
	p.Target.Direct = d.bool()
	p.Target.Port = int(d.int())
	if n := d.count(); n > 0 {
		p.Hosts = make([]tlsprobe.HostReport, n)
	}
	for i := range p.Hosts {
		h := &p.Hosts[i]
		h.Host = d.str()
		h.Preference = uint16(d.uint())
		if err := h.Addr.UnmarshalBinary(d.bytes()); err != nil && d.err == nil {
			d.err = err
		}
		h.STARTTLS = d.bool()
		h.TLSVersion = uint16(d.uint())
		h.Cipher = uint16(d.uint())
		h.ChainValid = d.bool()
		h.NameValid = d.bool()
		h.SelfSigned = d.bool()
		h.NotAfter = d.time()
		h.Subject = d.str()
		h.Issuer = d.shared()
		h.Capability = tlsprobe.Capability(d.uint())
		h.Cause = tlsprobe.Cause(d.uint())
		h.Detail = d.shared()
		h.Duration = time.Duration(d.int())
		if version >= findingsCodecV2 {
			h.ProbedAt = d.time()
		}
	}
	p.Capability = tlsprobe.Capability(d.uint())
	p.Cause = tlsprobe.Cause(d.uint())
	p.Detail = d.shared()
	p.ProbedAt = d.time()
	p.Duration = time.Duration(d.int())
	for i := range p.Hosts {
		if p.Hosts[i].ProbedAt.IsZero() {
			p.Hosts[i].ProbedAt = p.ProbedAt // version 1
		}
	}
	f.DANE = dane.Verdict(d.uint())
	f.DANEDetail = d.shared()
	if d.bool() {
		f.setSTS(&mtasts.Policy{Version: d.shared(), Mode: mtasts.Mode(d.uint()), MX: d.strs(), MaxAge: time.Duration(d.int()),
			ID: d.str(), FetchedAt: d.time(), Lines: d.strs()})
	}
	f.STSNote = d.shared()
	f.RecheckAt = d.time()
	switch {
	case d.err != nil:
		return fmt.Errorf("%w: %v", errFindingsCodec, d.err)
	case len(d.b) != 0:
		return fmt.Errorf("%w: %d bytes left over", errFindingsCodec, len(d.b))
	}
	return nil
}

type encoder struct {
	b       []byte
	scratch [18]byte // an encoded netip.AddrPort: 16 address bytes, 2 port bytes
}

func (e *encoder) uint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) int(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(s []byte) {
	e.uint(uint64(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) str(s string) {
	e.uint(uint64(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) strs(ss []string) {
	e.uint(uint64(len(ss)))
	for _, s := range ss {
		e.str(s)
	}
}
func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}
func (e *encoder) time(t time.Time) {
	e.int(t.Unix())
	e.uint(uint64(t.Nanosecond()))
}

// decoder reads what encoder wrote. The first error sticks: later reads
// return zero values, and decodeFindings reports it at the end.
type decoder struct {
	b      []byte
	err    error
	intern map[string]string
}

var errShort = errors.New("record cut short")

func (d *decoder) uint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads the length of a list: each element takes a byte at least,
// so a count beyond what is left is damage, not a reason to allocate.
func (d *decoder) count() int {
	n := d.uint()
	if n > uint64(len(d.b)) {
		d.err = cmp.Or(d.err, errShort)
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.count()
	if d.err != nil {
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) str() string { return string(d.bytes()) }

// shared reads a string of a field that takes few values, interned.
func (d *decoder) shared() string {
	b := d.bytes()
	if d.intern == nil || len(b) == 0 {
		return string(b)
	}
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	d.intern[s] = s
	return s
}

func (d *decoder) strs() []string {
	n := d.count()
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = d.str()
	}
	return ss
}

func (d *decoder) bool() bool { return d.uint() != 0 }

// zeroUnix is the zero time (January 1, year 1, UTC) in Unix seconds.
const zeroUnix = -62135596800

// time reads a time in the local zone, as the clock gives it; the zero
// time stays the zero time.
func (d *decoder) time() time.Time {
	sec, nsec := d.int(), d.uint()
	switch {
	case nsec >= 1e9:
		d.err = cmp.Or(d.err, errShort)
		return time.Time{}
	case sec == zeroUnix && nsec == 0:
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec))
}
