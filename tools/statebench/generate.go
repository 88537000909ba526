package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// batch is how many records one transaction writes.
const batch = 50000

// generate writes a state file with n destinations' findings, the first
// pins of them pinned at verify, and with history, each one's first
// answer. Destination i is dN.bench.test.
func generate(path string, n, pins int, legacy, history bool, now time.Time) error {
	if legacy {
		return generateLegacy(path, n, pins, now)
	}
	st, err := state.OpenBolt(path, time.Second)
	if err != nil {
		return err
	}
	defer st.Close()
	var ps []state.Pin
	for i := range pins {
		ps = append(ps, benchPin(i, now))
		if len(ps) == batch || i == pins-1 {
			if err := st.PutPins(ps...); err != nil {
				return err
			}
			ps = ps[:0]
		}
	}
	if history {
		if err := writeHistory(st, n, now); err != nil {
			return err
		}
	}
	var probes []state.Probe
	for i := range n {
		f := benchFindings(i, now)
		b, err := f.MarshalBinary()
		if err != nil {
			return err
		}
		probes = append(probes, state.Probe{Key: name(i), Expires: f.Gathered().Add(6 * time.Hour), Findings: b})
		if len(probes) == batch || i == n-1 {
			if err := st.PutProbes(probes...); err != nil {
				return err
			}
			probes = probes[:0]
		}
	}
	return st.Close()
}

// generateLegacy writes the file as releases before the compact format
// did: pins and findings as JSON, keyed by destination, in the "pins" and
// "probes" buckets of format version 1.
func generateLegacy(path string, n, pins int, now time.Time) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		return err
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"pins", "probes", "history"} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists([]byte("meta"))
		if err != nil {
			return err
		}
		return meta.Put([]byte("version"), []byte("1"))
	})
	if err != nil {
		return err
	}
	put := func(bucket string, count int, value func(i int) ([]byte, error)) error {
		for from := 0; from < count; from += batch {
			err := db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte(bucket))
				for i := from; i < min(from+batch, count); i++ {
					v, err := value(i)
					if err != nil {
						return err
					}
					if err := b.Put([]byte(name(i)), v); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := put("pins", pins, func(i int) ([]byte, error) { return json.Marshal(benchPin(i, now)) }); err != nil {
		return err
	}
	if err := put("probes", n, func(i int) ([]byte, error) { return json.Marshal(benchFindings(i, now)) }); err != nil {
		return err
	}
	if err := db.Sync(); err != nil {
		return err
	}
	return db.Close()
}

// writeHistory records the first answer for each of n destinations.
func writeHistory(st *state.Bolt, n int, now time.Time) error {
	var ds []state.Decision
	for i := range n {
		ds = append(ds, state.Decision{Time: now.Add(-time.Duration(i%5000) * time.Second), Destination: name(i), Map: "tlspolicy",
			Answer: "verify protocols=>=TLSv1.2", Rule: "/etc/tlspolicyd/rules.yaml:12", Evidence: state.Evidence{Probe: "verify"}})
		if len(ds) == batch || i == n-1 {
			if err := st.AppendDecisions(ds...); err != nil {
				return err
			}
			ds = ds[:0]
		}
	}
	return nil
}

// name is the destination of index i; names sort in index order.
func name(i int) string { return fmt.Sprintf("d%07d.bench.test", i) }

func benchPin(i int, now time.Time) state.Pin {
	return state.Pin{Key: name(i), Level: "verify", FirstSeen: now.Add(-240 * time.Hour), LastSeen: now.Add(-time.Hour),
		Expires: now.Add(719 * time.Hour), Source: "probe"}
}

// benchFindings are what gathering leaves for a destination whose MX
// hosts all verify: one host, or two for odd i; every tenth publishes an
// MTA-STS policy in enforce mode. They were gathered within the last five
// hours, spread evenly.
func benchFindings(i int, now time.Time) policyd.Findings {
	d := name(i)
	at := now.Add(-time.Duration(i%5000) * 5 * time.Hour / 5000).Truncate(time.Millisecond)
	hosts := []tlsprobe.HostReport{benchHost("mx1."+d, 10, i, at)}
	if i%2 == 1 {
		hosts = append(hosts, benchHost("mx2."+d, 20, i+1, at))
	}
	f := policyd.Findings{
		Probe: tlsprobe.Report{Target: tlsprobe.Target{Name: d}, Hosts: hosts, Capability: tlsprobe.CapVerify,
			ProbedAt: at, Duration: 420 * time.Millisecond},
		DANE:       dane.NoDANE,
		DANEDetail: "MX records not DNSSEC-validated",
		STSNote:    mtasts.OutcomeNoPolicy.String(),
		RecheckAt:  at.Add(time.Hour),
	}
	if i%10 == 0 {
		f.STS = &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeEnforce, MX: []string{"mx1." + d, "mx2." + d},
			MaxAge: 7 * 24 * time.Hour, ID: "20240101T000000", FetchedAt: at,
			Lines: []string{"version: STSv1", "mode: enforce", "mx: mx1." + d, "mx: mx2." + d, "max_age: 604800"}}
		f.STSNote = mtasts.OutcomeFetched.String()
	}
	return f
}

func benchHost(host string, pref uint16, i int, at time.Time) tlsprobe.HostReport {
	addr := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
	return tlsprobe.HostReport{Host: host, Preference: pref, Addr: netip.AddrPortFrom(addr, 25), STARTTLS: true,
		TLSVersion: tls.VersionTLS13, Cipher: tls.TLS_AES_128_GCM_SHA256, ChainValid: true, NameValid: true,
		NotAfter: at.Add(60 * 24 * time.Hour).Truncate(time.Second), Subject: "CN=" + host,
		Issuer: "CN=R11,O=Let's Encrypt,C=US", Capability: tlsprobe.CapVerify, Duration: 180 * time.Millisecond}
}
