package rules

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestShippedRulesLoad(t *testing.T) {
	t.Parallel()
	p, err := LoadFile("../rules.yaml")
	if err != nil {
		t.Fatalf("the shipped rules.yaml must be valid:\n%v", err)
	}
	s := p.Settings
	if s.Listen.Socketmap != "127.0.0.1:10028" || s.Listen.TCPTable != "127.0.0.1:10029" || s.Listen.HTTP != "127.0.0.1:10032" {
		t.Errorf("listeners = %+v, want the documented ports on loopback", s.Listen)
	}
	if p.Defaults.Level != LevelMay || p.Defaults.Upgrade != UpgradeEncrypt {
		t.Errorf("defaults = %s/%s, want may with upgrade encrypt", p.Defaults.Level, p.Defaults.Upgrade)
	}
	if s.ProbeWait != 5*time.Second || s.ProbeTTL != 6*time.Hour || s.PinTTL != 720*time.Hour {
		t.Errorf("probe settings = %+v", s)
	}
	// Anyone who can write beside the file can run it (systemd puts the
	// state in $STATE_DIRECTORY instead).
	if want, _ := filepath.Abs("../state.db"); os.Getenv(StateDirectoryEnv) == "" && s.StatePath != want {
		t.Errorf("state.path = %q, want %q, beside the configuration", s.StatePath, want)
	}
}

// TestShippedExamplesLoad uncomments every example in rules.yaml, so the
// examples a postmaster copies are valid too.
func TestShippedExamplesLoad(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	head, tail, ok := strings.Cut(string(data), "destinations: []")
	if !ok {
		t.Fatal("rules.yaml has no \"destinations: []\" line")
	}
	tail = strings.Replace(tail, "classes: []", "classes:", 1)
	text := head + "destinations:" + regexp.MustCompile(`(?m)^#(  [ -])`).ReplaceAllString(tail, "$1")
	partners := func(path string) ([]byte, error) {
		if path != "partners.txt" {
			t.Errorf("match_file read as %q, want partners.txt beside the configuration", path)
		}
		return []byte("# partners\npartner-c.example\n"), nil
	}
	p, err := load("rules.yaml (examples)", []byte(text), partners)
	if err != nil {
		t.Fatalf("uncommented examples do not load:\n%v\n%s", err, text)
	}
	if len(p.Rules) != 6 || len(p.Classes) != 1 || len(p.Warnings) != 0 {
		t.Fatalf("got %d rules, %d classes and warnings %v; want 6, 1 and none", len(p.Rules), len(p.Classes), p.Warnings)
	}
	if r := p.Rules[5]; r.MTASTS || r.DANE {
		t.Errorf("legacy rule opts out of mtasts and dane, got %+v", r)
	}
}

func TestDefaultsOfEmptyFile(t *testing.T) {
	t.Parallel()
	p, err := Load("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Settings
	want := Settings{
		SocketMode: 0o666, DNSTimeout: 5 * time.Second, ProbePort: 25,
		ProbeTimeout: 30 * time.Second, ProbeTTL: 6 * time.Hour, ProbeNegTTL: 10 * time.Minute,
		ProbeWait: 5 * time.Second, StatePath: "/var/lib/tlspolicyd/state.db", PinTTL: 720 * time.Hour,
		MTASTSEnabled: true, PostfixVersion: Version{3, 7}, MinimumTLS: "TLSv1.2",
		MaxConnections: 1000, IdleTimeout: 60 * time.Second,
	}
	want.Listen.SocketMode = "0666"
	if s.SocketMode != want.SocketMode || s.DNSTimeout != want.DNSTimeout || s.ProbePort != want.ProbePort ||
		s.MaxConnections != want.MaxConnections || s.IdleTimeout != want.IdleTimeout ||
		s.ProbeTimeout != want.ProbeTimeout || s.ProbeTTL != want.ProbeTTL || s.ProbeNegTTL != want.ProbeNegTTL ||
		s.ProbeWait != want.ProbeWait || s.StatePath != want.StatePath || s.PinTTL != want.PinTTL ||
		s.MTASTSEnabled != want.MTASTSEnabled || s.PostfixVersion != want.PostfixVersion || s.MinimumTLS != want.MinimumTLS {
		t.Errorf("defaults:\n got %+v\nwant %+v", s, want)
	}
	if p.Defaults.Level != LevelMay || p.Defaults.Upgrade != UpgradeEncrypt {
		t.Errorf("default rule = %+v", p.Defaults)
	}
}

func TestConnectionSettings(t *testing.T) {
	t.Parallel()
	p := mustLoad(t, "listen:\n  max_connections: 100\n  idle_timeout: 1s\n")
	if s := p.Settings; s.MaxConnections != 100 || s.IdleTimeout != time.Second {
		t.Errorf("max_connections %d, idle_timeout %v; want 100 and 1s", s.MaxConnections, s.IdleTimeout)
	}
}

var wantRE = regexp.MustCompile(`(?m)^# want: (?:([^\s:]+):)?(\d+): (.*)$`)

// TestBadConfigs loads every file in testdata/bad. Each file states the
// errors it must produce in "# want: LINE: message-prefix" comments, or
// "# want: FILE:LINE: message-prefix" for an error in another file of
// testdata/bad (a match file); the errors must be exactly those, in that
// order.
func TestBadConfigs(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs found: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			wants := wantRE.FindAllStringSubmatch(string(data), -1)
			if len(wants) == 0 {
				t.Fatal("file states no expected error")
			}
			_, err = LoadFile(file)
			var errs ConfigErrors
			if !errors.As(err, &errs) {
				t.Fatalf("LoadFile = %v, want ConfigErrors", err)
			}
			if len(errs) != len(wants) {
				t.Errorf("got %d errors, want %d:\n%v", len(errs), len(wants), err)
			}
			for i, w := range wants {
				if i >= len(errs) {
					break
				}
				wantFile := file
				if w[1] != "" {
					wantFile = filepath.Join(filepath.Dir(file), w[1])
				}
				line, _ := strconv.Atoi(w[2])
				got := errs[i]
				if got.File != wantFile || got.Line != line || !strings.HasPrefix(got.Msg, w[3]) {
					t.Errorf("error %d:\n got %s\nwant %s:%d: %s...", i, got, wantFile, line, w[3])
				}
			}
		})
	}
}

func TestConfigErrorText(t *testing.T) {
	t.Parallel()
	_, err := Load("x.yaml", []byte("defaults:\n  level: maybe\n"))
	want := `x.yaml:2: defaults.level: unknown TLS level "maybe" (write one of: none, may, encrypt, verify, secure, dane, dane-only)`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant  %s", err, want)
	}
}

func TestLoadFileUnreadable(t *testing.T) {
	t.Parallel()
	for file, want := range map[string]string{
		"testdata/does-not-exist.yaml": "testdata/does-not-exist.yaml: cannot read the configuration: no such file or directory (write it there, or name it with -config FILE)",
		"testdata":                     "testdata: cannot read the configuration: is a directory (name the YAML file itself with -config FILE)",
	} {
		if _, err := LoadFile(file); err == nil || err.Error() != want {
			t.Errorf("LoadFile(%s) = %v\nwant %s", file, err, want)
		}
	}
}

func TestClassFallbackWarning(t *testing.T) {
	t.Parallel()
	p := mustLoad(t, `classes:
  - name: phi
    senders: ["@clinic.test"]
    level: verify
    on_fail: fallback
    fallback: "smtp:[gateway.test]:2525"
  - name: ok
    senders: ["@ok.test"]
    level: verify
    on_fail: fallback
    fallback: "smtp-ok:[gateway.test]:2525"
`)
	if len(p.Warnings) != 1 || p.Warnings[0].Line != 6 ||
		!strings.Contains(p.Warnings[0].Msg, `use the class transport ("smtp-phi:[gateway.test]:2525")`) {
		t.Errorf("warnings = %v, want one for classes[0].fallback at line 6", p.Warnings)
	}
}

func TestObservabilitySettings(t *testing.T) {
	t.Parallel()
	p, err := Load("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Settings
	if s.LogLevel != slog.LevelInfo || s.LogFormat != "text" || s.LogDecisions != DecisionsChanges || s.HistoryTTL != 2160*time.Hour || s.HTTPToken != "" {
		t.Errorf("defaults: level %v format %q decisions %v history %v token %q", s.LogLevel, s.LogFormat, s.LogDecisions, s.HistoryTTL, s.HTTPToken)
	}
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("  s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err = Load("open.yaml", []byte("listen: {http: \"0.0.0.0:10032\"}\nhttp: {auth_file: "+token+"}\nlog: {level: DEBUG, format: json, decisions: all}\n"))
	if err != nil {
		t.Fatalf("a non-loopback listener with a token must load: %v", err)
	}
	s = p.Settings
	if s.HTTPToken != "s3cret-token" || s.LogLevel != slog.LevelDebug || s.LogFormat != "json" || s.LogDecisions != DecisionsAll {
		t.Errorf("got token %q level %v format %q decisions %v", s.HTTPToken, s.LogLevel, s.LogFormat, s.LogDecisions)
	}
	if err := os.WriteFile(token, []byte("two words\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load("bad.yaml", []byte("http: {auth_file: "+token+"}\n")); err == nil || !strings.Contains(err.Error(), "one token") {
		t.Errorf("a token with a space inside: %v", err)
	}
	for _, addr := range []string{"127.0.0.1:10032", "[::1]:10032", "localhost:10032", "unix:/run/tlspolicyd/http.sock"} {
		if _, err := Load("local.yaml", []byte("listen: {http: \""+addr+"\"}\n")); err != nil {
			t.Errorf("listen.http %s needs no token: %v", addr, err)
		}
	}
}

// TestRedisSettings: state.redis as the daemon gets it, the password read
// from its file without the surrounding whitespace; no addrs is no fleet.
func TestRedisSettings(t *testing.T) {
	t.Parallel()
	pw := filepath.Join(t.TempDir(), "redis.pw")
	if err := os.WriteFile(pw, []byte("  s3cret word\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load("fleet.yaml", []byte("state:\n  redis:\n    addrs: [\"127.0.0.1:6379\", \"[::1]:6380\"]\n    username: tlspolicyd\n    password_file: "+pw+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := p.Settings.Redis
	if !r.Enabled() || len(r.Addrs) != 2 || r.Username != "tlspolicyd" || r.Password != "s3cret word" || r.KeyPrefix != "tlspolicyd:" {
		t.Errorf("state.redis = %+v; want two addrs, user tlspolicyd, password \"s3cret word\", prefix tlspolicyd:", r)
	}
	p, err = Load("alone.yaml", []byte("defaults: {level: may}\n"))
	if err != nil || p.Settings.Redis.Enabled() {
		t.Errorf("no state.redis: enabled %v, err %v; want a daemon on its own", p.Settings.Redis.Enabled(), err)
	}
}
