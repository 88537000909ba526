// Package report writes the TLS posture of every destination the daemon
// knows, for a compliance officer and an auditor: a CSV file with one row
// per destination (its columns are fixed: scripts read them), the same as
// JSON, and a printable HTML document that says when and where it was
// made and from which configuration (with its SHA-256), so that it can be
// filed as evidence.
package report

import (
	_ "embed"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/policyd"
)

// Report is one report: when, where and from what it was made, and the
// destinations.
type Report struct {
	GeneratedAt  time.Time                 `json:"generated_at"`
	Host         string                    `json:"host"`
	ConfigFile   string                    `json:"config_file"`
	ConfigSHA256 string                    `json:"config_sha256"`
	Source       string                    `json:"source"` // "daemon" or "state file"
	Totals       map[string]int            `json:"totals"` // destinations by level
	Destinations []policyd.DestinationView `json:"destinations"`
}

// New makes a report of views, counting them by level.
func New(views []policyd.DestinationView, at time.Time, host, configFile, configSHA256, source string) Report {
	if views == nil {
		views = []policyd.DestinationView{} // [] in JSON, not null
	}
	r := Report{GeneratedAt: at, Host: host, ConfigFile: configFile, ConfigSHA256: configSHA256, Source: source,
		Totals: map[string]int{}, Destinations: views}
	for _, v := range views {
		r.Totals[v.Level]++
	}
	return r
}

// Header is the CSV header line's columns.
var Header = []string{"destination", "level", "answer", "floor", "rule", "mx_hosts", "tls_versions",
	"certificates_valid", "earliest_certificate_expiry", "pin_level", "pin_expires", "mta_sts_mode", "dane",
	"last_probe", "downgrades_30d"}

// Write writes r in format: csv, json or html.
func Write(w io.Writer, format string, r Report) error {
	switch format {
	case "csv":
		return writeCSV(w, r)
	case "json":
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "html":
		return page.Execute(w, htmlReport{r, Rows(r)})
	}
	return fmt.Errorf("unknown report format %q (write csv, json or html)", format)
}

func writeCSV(w io.Writer, r Report) error {
	cw := csv.NewWriter(w)
	cw.Write(Header)
	for _, row := range Rows(r) {
		cw.Write(row.cells())
	}
	cw.Flush()
	return cw.Error()
}

// Row is one destination as the CSV columns flatten it: lists are
// separated by spaces, times are RFC 3339, a missing value is empty.
type Row struct {
	Destination, Level, Answer, Floor, Rule, MXHosts, TLSVersions, CertificatesValid,
	EarliestExpiry, PinLevel, PinExpires, MTASTSMode, DANE, LastProbe string
	Downgrades30d int
}

func (r Row) cells() []string {
	return []string{r.Destination, r.Level, r.Answer, r.Floor, r.Rule, r.MXHosts, r.TLSVersions, r.CertificatesValid,
		r.EarliestExpiry, r.PinLevel, r.PinExpires, r.MTASTSMode, r.DANE, r.LastProbe, strconv.Itoa(r.Downgrades30d)}
}

// Rows flattens the report's destinations.
func Rows(r Report) []Row {
	rows := make([]Row, 0, len(r.Destinations))
	for _, v := range r.Destinations {
		row := Row{Destination: v.Destination, Level: v.Level, Answer: v.Answer, Floor: v.Floor, Rule: v.Rule,
			DANE: v.DANE, Downgrades30d: v.Downgrades30d}
		var hosts, versions []string
		var earliest time.Time
		valid, certs := true, 0
		for _, mx := range v.MX {
			hosts = appendNew(hosts, mx.Host)
			if mx.TLSVersion != "" {
				versions = appendNew(versions, mx.TLSVersion)
			}
			if c := mx.Certificate; c != nil {
				certs++
				valid = valid && c.Valid && c.NameMatch
				if earliest.IsZero() || c.NotAfter.Before(earliest) {
					earliest = c.NotAfter
				}
			}
		}
		row.MXHosts, row.TLSVersions = strings.Join(hosts, " "), strings.Join(versions, " ")
		if certs > 0 {
			row.CertificatesValid = strconv.FormatBool(valid)
			row.EarliestExpiry = rfc3339(earliest)
		}
		if v.Pin != nil {
			row.PinLevel, row.PinExpires = v.Pin.Level, rfc3339(v.Pin.Expires)
		}
		if v.MTASTS != nil {
			row.MTASTSMode = v.MTASTS.Mode
		}
		if v.ProbedAt != nil {
			row.LastProbe = rfc3339(*v.ProbedAt)
		}
		rows = append(rows, row)
	}
	return rows
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

type htmlReport struct {
	Report
	Rows []Row
}

//go:embed report.html
var pageText string

var page = template.Must(template.New("report").Funcs(template.FuncMap{"rfc3339": rfc3339}).Parse(pageText))
