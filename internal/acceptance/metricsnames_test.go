package acceptance

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsConfig starts every listener and every evidence source (MTA-STS
// and DANE register their collectors only when enabled), kept off the
// network as hermetic keeps the other tests: the DNS server at @DNS@ does
// not exist.
const metricsConfig = `listen:
  socketmap: @SOCKETMAP@
  tcptable: @TCPTABLE@
  policy: @POLICY@
  exim: @EXIM@
  http: @HTTP@
dns:
  servers: ["@DNS@"]
  timeout: 1s
state:
  path: @DIR@/state.db
mtasts:
  enabled: true
dane:
  enabled: true
` + rules

// metricName is how the alerting rules and the dashboard name the daemon's
// metrics. Anything else they name (up, Grafana's variables) is not the
// daemon's to export.
var metricName = regexp.MustCompile(`tlspolicyd_[a-z0-9_]+`)

// TestMetricNamesExist checks that every tlspolicyd_ metric the alerting
// rules and the Grafana dashboard name is exported by the real daemon: a
// renamed or misspelt metric would leave an alert that never fires and a
// panel that stays empty, with nothing else to say so.
func TestMetricNamesExist(t *testing.T) {
	t.Parallel()
	namedIn := map[string][]string{} // metric name -> the files naming it
	for _, file := range []string{alertRules, dashboard} {
		names := metricNamesIn(t, file)
		if len(names) == 0 {
			t.Fatalf("%s names no tlspolicyd_ metric", file)
		}
		for _, n := range names {
			namedIn[n] = append(namedIn[n], file)
		}
	}

	d := startDaemon(t, metricsConfig)
	// tlspolicyd_decisions_total has series only once a decision was made.
	rcptDecision(t, d)
	families := scrape(t, d)

	var missing []string
	var fleetNames []string
	for name := range namedIn {
		switch {
		case strings.HasPrefix(name, "tlspolicyd_fleet_"):
			fleetNames = append(fleetNames, name) // only a daemon of a fleet has them
		case !exported(families, name):
			missing = append(missing, name)
		}
	}
	if len(fleetNames) > 0 {
		r := startFleetRedis(t)
		fd := startDaemon(t, r.withFleet(t, metricsConfig))
		fleetFamilies := scrape(t, fd)
		for _, name := range fleetNames {
			if !exported(fleetFamilies, name) {
				missing = append(missing, name)
			}
		}
	}
	sort.Strings(missing)
	for _, name := range missing {
		t.Errorf("%s: named in %s, but not in the daemon's /metrics", name, strings.Join(namedIn[name], " and "))
	}
	if len(missing) > 0 {
		var have []string
		for name := range families {
			if strings.HasPrefix(name, "tlspolicyd_") {
				have = append(have, name)
			}
		}
		sort.Strings(have)
		t.Logf("the daemon exports: %s", strings.Join(have, " "))
	}
}

// TestMetricsDashboard checks what makes the Grafana dashboard importable
// into any Grafana: valid JSON, and every Prometheus query going to the data
// source the user picks ($datasource), not to a data source UID that exists
// only where the dashboard was made.
func TestMetricsDashboard(t *testing.T) {
	t.Parallel()
	text, err := os.ReadFile(filepath.Join(moduleRoot, dashboard))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []any `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(text, &dash); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	if len(dash.Panels) == 0 {
		t.Errorf("%s has no panels", dashboard)
	}
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
		if v.Name == "datasource" && v.Query != "prometheus" {
			t.Errorf("%s: variable datasource selects %v data sources, want prometheus", dashboard, v.Query)
		}
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" {
		t.Errorf("%s: variables %v; want datasource (a data source) and job (a query)", dashboard, vars)
	}

	var raw any
	if err := json.Unmarshal(text, &raw); err != nil {
		t.Fatal(err)
	}
	n := 0
	walkJSON(raw, "", func(path string, obj map[string]any) {
		ds, ok := obj["datasource"]
		if !ok {
			return
		}
		n++
		ref, _ := ds.(map[string]any)
		if ref["type"] != "prometheus" || ref["uid"] != "${datasource}" {
			t.Errorf("%s: %s.datasource is %v; want {\"type\": \"prometheus\", \"uid\": \"${datasource}\"}", dashboard, path, ds)
		}
	})
	if n == 0 {
		t.Errorf("%s: no datasource references at all", dashboard)
	}
}

// walkJSON calls f on every object in v, with its path (e.g.
// .panels[3].targets[0]).
func walkJSON(v any, path string, f func(path string, obj map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		f(path, v)
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			walkJSON(v[k], path+"."+k, f)
		}
	case []any:
		for i, e := range v {
			walkJSON(e, path+"["+strconv.Itoa(i)+"]", f)
		}
	}
}

// metricNamesIn returns the distinct tlspolicyd_ names in a file of the
// module, sorted.
func metricNamesIn(t *testing.T, file string) []string {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(moduleRoot, file))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var names []string
	for _, n := range metricName.FindAllString(string(text), -1) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// exported reports whether name is a metric family of the scrape, or a
// series of one: name_bucket, name_sum and name_count of a histogram,
// name_sum and name_count of a summary.
func exported(families map[string]*dto.MetricFamily, name string) bool {
	if _, ok := families[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if mf, ok := families[base]; ok {
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				return true
			case dto.MetricType_SUMMARY:
				return suffix != "_bucket"
			}
		}
	}
	return false
}

// scrape returns the metric families of the daemon's GET /metrics, parsed
// as Prometheus parses the text format.
func scrape(t *testing.T, d *daemon) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: ioTimeout}
	defer client.CloseIdleConnections()
	code, body, err := httpGet(client, "http://"+d.http+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, %v", code, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return families
}

// rcptDecision asks the daemon's policy delegation listener for one RCPT
// decision, as Postfix's check_policy_service does, and checks that it
// answers an action.
func rcptDecision(t *testing.T, d *daemon) {
	t.Helper()
	c := d.dial(t, "policy")
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	req := "request=smtpd_access_policy\nprotocol_state=RCPT\n" +
		"sender=someone@sender.test\nrecipient=postmaster@unmatched.test\n\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("policy request: %v", err)
	}
	r := bufio.NewReader(c)
	action, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(action, "action=") {
		t.Fatalf("policy reply: %q, %v; want action=...", action, err)
	}
	if end, err := r.ReadString('\n'); end != "\n" || err != nil {
		t.Fatalf("policy reply %q: then %q, %v; want an empty line", action, end, err)
	}
}
