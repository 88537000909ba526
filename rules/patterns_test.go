package rules

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// matchOf returns the entry that answers raw, failing the test if the key
// does not parse.
func matchOf(t *testing.T, p *Rules, raw string) *Rule {
	t.Helper()
	k, err := ParseKey(raw)
	if err != nil {
		t.Fatalf("ParseKey(%q): %v", raw, err)
	}
	return p.Match(k)
}

func TestMatchList(t *testing.T) {
	t.Parallel()
	p := mustLoad(t, `destinations:
  - match: [partner-a.example, .partner-b.example]
    level: verify
  - match:
      - partner-c.example
      - "[relay.partner.example]:587"
    level: secure
    upgrade: none
  - match: other.example
    level: encrypt
`)
	tests := []struct {
		key   string
		index int
		ref   string
		level Level
		desc  string
	}{
		{"partner-a.example", 0, "test.yaml:2", LevelVerify, `test.yaml:2 destinations[0] match "partner-a.example"`},
		{"mx.PARTNER-B.example", 0, "test.yaml:2", LevelVerify, `test.yaml:2 destinations[0] match ".partner-b.example"`},
		{"partner-c.example", 1, "test.yaml:5", LevelSecure, `test.yaml:5 destinations[1] match "partner-c.example"`},
		{"[relay.partner.example]:587", 1, "test.yaml:6", LevelSecure, `test.yaml:6 destinations[1] match "[relay.partner.example]:587"`},
		{"other.example", 2, "test.yaml:9", LevelEncrypt, `test.yaml:9 destinations[2] match "other.example"`},
	}
	for _, tt := range tests {
		r := matchOf(t, p, tt.key)
		if r.Index != tt.index || r.Ref() != tt.ref || r.Level != tt.level || r.Describe() != tt.desc {
			t.Errorf("%s: got destinations[%d] at %s level %s, %q; want destinations[%d] at %s level %s, %q",
				tt.key, r.Index, r.Ref(), r.Level, r.Describe(), tt.index, tt.ref, tt.level, tt.desc)
		}
	}
	if r := matchOf(t, p, "partner-c.example"); r.Upgrade != UpgradeNone || r.Matched() {
		t.Errorf("partner-c.example: upgrade %s, matched %v before any lookup", r.Upgrade, r.Matched())
	}
	// The rule lists as one rule that matched once any pattern has.
	matchOf(t, p, "[relay.partner.example]:587").MarkMatched()
	if r := p.Rules[1]; !r.Matched() || p.Rules[0].Matched() || r.Match != "[partner-c.example, [relay.partner.example]:587]" || len(r.Patterns()) != 2 || r.Ref() != "test.yaml:4" {
		t.Errorf("rule 1: matched %v (rule 0: %v), match %q, %d patterns, at %s", r.Matched(), p.Rules[0].Matched(), r.Match, len(r.Patterns()), r.Ref())
	}
	if r := p.Rules[2]; len(r.Patterns()) != 1 || r.Patterns()[0] != r {
		t.Errorf("a rule of one pattern is its own entry: %v", r.Patterns())
	}
}

// TestEntriesCopyTheRule: an entry answers exactly as its rule would, but
// for where it is written. A field added to Rule and not to entry fails
// here.
func TestEntriesCopyTheRule(t *testing.T) {
	t.Parallel()
	p, err := load("test.yaml", []byte(`destinations:
  - match: [a.example, b.example]
    level: verify
    upgrade: none
    on_fail: fallback
    fallback: "smtp:[gw.example]:2525"
    mtasts: false
    dane: false
  - match_file: partners.txt
    level: secure
`), func(string) ([]byte, error) { return []byte("c.example\n"), nil })
	if err != nil {
		t.Fatal(err)
	}
	own := map[string]bool{"Match": true, "File": true, "Line": true}
	for _, r := range p.Rules {
		for _, e := range r.Patterns() {
			rv, ev := reflect.ValueOf(r).Elem(), reflect.ValueOf(e).Elem()
			for i := 0; i < rv.NumField(); i++ {
				f := rv.Type().Field(i)
				if f.IsExported() && !own[f.Name] && !reflect.DeepEqual(rv.Field(i).Interface(), ev.Field(i).Interface()) {
					t.Errorf("entry %q: %s = %v, its rule has %v", e.Match, f.Name, ev.Field(i), rv.Field(i))
				}
			}
		}
	}
}

func TestMatchFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := filepath.Join(dir, "rules.yaml")
	partners := filepath.Join(dir, "partners.txt")
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(config, `destinations:
  - match: a.example
    level: may
  - match_file: partners.txt
    level: verify
`)
	write(partners, "\ufeff# partners of the clinic\n\npartner-a.example\n  .partner-b.example   # and its subdomains\r\n")
	p, err := LoadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	for key, line := range map[string]int{"partner-a.example": 3, "x.partner-b.example": 4} {
		r := matchOf(t, p, key)
		if r.Index != 1 || r.File != partners || r.Line != line || r.Level != LevelVerify {
			t.Errorf("%s: destinations[%d] at %s level %s; want destinations[1] at %s:%d level verify", key, r.Index, r.Ref(), r.Level, partners, line)
		}
	}
	want := partners + `:3 (match_file of destinations[1] at ` + config + `:4) match "partner-a.example"`
	if got := matchOf(t, p, "partner-a.example").Describe(); got != want {
		t.Errorf("Describe:\n got %s\nwant %s", got, want)
	}
	if r := p.Rules[1]; r.MatchFile != "partners.txt" || r.Match != "" || len(r.Patterns()) != 2 || r.Describe() != config+`:4 destinations[1] match_file "partners.txt"` {
		t.Errorf("rule 1: match_file %q, match %q, %d patterns, %q", r.MatchFile, r.Match, len(r.Patterns()), r.Describe())
	}
	if r := matchOf(t, p, "partner-c.example"); r.Index >= 0 {
		t.Errorf("partner-c.example is in no file yet, matched by destinations[%d]", r.Index)
	}

	// Loading again (as a reload does) reads the file again.
	write(partners, "partner-a.example\npartner-c.example\n")
	p, err = LoadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	if r := matchOf(t, p, "partner-c.example"); r.Index != 1 || r.Ref() != partners+":2" {
		t.Errorf("after editing the file: partner-c.example matched by destinations[%d] at %s, want destinations[1] at %s:2", r.Index, r.Ref(), partners)
	}
	if r := matchOf(t, p, "x.partner-b.example"); r.Index >= 0 {
		t.Errorf("after editing the file: .partner-b.example still matched by destinations[%d]", r.Index)
	}
}

// TestMatchFilePath: a relative match_file is taken from the folder of the
// configuration as named, an absolute one as it is.
func TestMatchFilePath(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ config, matchFile, want string }{
		{"rules.yaml", "partners.txt", "partners.txt"},
		{"etc/tlspolicyd/rules.yaml", "partners.txt", "etc/tlspolicyd/partners.txt"},
		{"/etc/tlspolicyd/rules.yaml", "lists/partners.txt", "/etc/tlspolicyd/lists/partners.txt"},
		{"/etc/tlspolicyd/rules.yaml", "../partners.txt", "/etc/partners.txt"},
		{"etc/rules.yaml", "/srv/partners.txt", "/srv/partners.txt"},
	} {
		var read []string
		_, err := load(tt.config, []byte("destinations:\n  - match_file: "+tt.matchFile+"\n"), func(path string) ([]byte, error) {
			read = append(read, path)
			return []byte("a.example\n"), nil
		})
		if err != nil || len(read) != 1 || read[0] != tt.want {
			t.Errorf("config %s, match_file %s: read %q (%v), want %s", tt.config, tt.matchFile, read, err, tt.want)
		}
	}
}

func TestMatchFileBounds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := "destinations:\n  - match_file: partners.txt\n    level: verify\n"
	loadWith := func(data string) (*Rules, error) {
		return load(filepath.Join(dir, "rules.yaml"), []byte(config), func(string) ([]byte, error) { return []byte(data), nil })
	}
	wantError := func(err error, msg string) {
		t.Helper()
		var errs ConfigErrors
		if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Line != 2 || !strings.Contains(errs[0].Msg, msg) {
			t.Errorf("got %v, want one error at line 2 saying %q", err, msg)
		}
	}

	// As many lines as allowed load; every pattern after the first is a
	// duplicate, and only so many of them are warned about.
	p, err := loadWith(strings.Repeat("a.example\n", maxMatchFileLines))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != maxDuplicateWarnings+1 || !strings.HasSuffix(p.Warnings[maxDuplicateWarnings].Error(), "partners.txt:22: destinations[0]: this pattern and 99978 more after it are matched already by earlier ones, and not listed one by one (remove the duplicates; the first match wins)") {
		t.Errorf("%d warnings, want %d and a last one counting the rest: %v", len(p.Warnings), maxDuplicateWarnings+1, p.Warnings[len(p.Warnings)-1])
	}
	_, err = loadWith(strings.Repeat("a.example\n", maxMatchFileLines) + "b.example")
	wantError(err, "has more than 100000 lines (split it into several files, each named by a rule of its own)")

	// On the disk: a file over 1 MiB, and a FIFO, which would block.
	big := filepath.Join(dir, "big.txt")
	if err := os.WriteFile(big, []byte(strings.Repeat("#\n", maxMatchFileSize/2)+"x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.txt")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for file, msg := range map[string]string{
		big:  big + " is larger than 1 MiB (split it into several files",
		fifo: "cannot read " + fifo + ": not a regular file (name a regular file holding one pattern per line)",
	} {
		done := make(chan error, 1)
		go func() {
			_, err := Load(filepath.Join(dir, "rules.yaml"), []byte(strings.Replace(config, "partners.txt", file, 1)))
			done <- err
		}()
		select {
		case err := <-done:
			wantError(err, msg)
		case <-time.After(10 * time.Second):
			t.Fatalf("loading with match_file %s did not finish", file)
		}
	}

	p, err = loadWith("# nothing yet\n\n")
	if err != nil || len(p.Warnings) != 1 || p.Warnings[0].Line != 2 || !strings.Contains(p.Warnings[0].Msg, "holds no pattern") {
		t.Errorf("an empty match file: %v, warnings %v; want one warning at line 2", err, p.Warnings)
	}
}

// TestDuplicatePatterns: a pattern matched already is a warning that cites
// both places; the first match wins, as always.
func TestDuplicatePatterns(t *testing.T) {
	t.Parallel()
	p, err := load("test.yaml", []byte(`destinations:
  - match: a.example
    level: secure
  - match: [b.example, A.example.]
    level: verify
  - match_file: partners.txt
    level: may
`), func(string) ([]byte, error) { return []byte("c.example\n\nB.EXAMPLE\n"), nil })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`test.yaml:4: destinations[1].match[1]: "A.example." is matched already by test.yaml:2 (destinations[0]), which comes first and wins; this entry never applies (remove one of the two)`,
		`partners.txt:3: destinations[2]: "B.EXAMPLE" is matched already by test.yaml:4 (destinations[1]), which comes first and wins; this entry never applies (remove one of the two)`,
	}
	if got := strings.Split(p.Warnings.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("warnings:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for key, index := range map[string]int{"a.example": 0, "b.example": 1, "c.example": 2} {
		if r := matchOf(t, p, key); r.Index != index {
			t.Errorf("%s: matched by destinations[%d], want destinations[%d]", key, r.Index, index)
		}
	}
}

// TestTypeErrorsStandAlone: a value of the wrong type is reported once;
// its default stands in for it, and nothing that follows from it is
// reported as well.
func TestTypeErrorsStandAlone(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ yaml, want string }{
		{"listen: {max_connections: 1k}", `x.yaml:1: listen.max_connections: "1k" is not a whole number (write digits only, without quotes, e.g. max_connections: 1000)`},
		{"listen: {max_connections: \"100\"}", `x.yaml:1: listen.max_connections: "100" is not a whole number (write digits only, without quotes, e.g. max_connections: 1000)`},
		{"destinations:\n  - a.example\n", `x.yaml:2: destinations[0]: "a.example" is not a mapping of keys (write the entry's keys after "- ", e.g. "- match: a.example")`},
		{"destinations:\n  - {match: {a: b}, level: verify}\n", `x.yaml:2: destinations[0].match: a mapping (key: value) is not a pattern or a list of patterns (write match: example.org, or a list in square brackets: match: [a.example, b.example])`},
		{"destinations:\n  - {match_file: [a.txt], level: verify}\n", `x.yaml:2: destinations[0].match_file: a list is not a single value (write one value on the key's line, match_file: VALUE, in quotes if it holds ": " or "#")`},
		{"destinations:\n  - {match: a.example, dane: maybe}\n", `x.yaml:2: destinations[0].dane: "maybe" is not true or false (write dane: true or dane: false)`},
		{"classes:\n  - name: phi\n    senders: \"@a.example\"\n    level: verify\n", `x.yaml:3: classes[0].senders: "@a.example" is not a list (write senders: ["a", "b"], or one "- value" per line below it)`},
		{"log:\n  level: [debug]\n", `x.yaml:2: log.level: a list is not a single value (write one value on the key's line, e.g. level: info)`},
	} {
		if _, err := Load("x.yaml", []byte(tt.yaml)); err == nil || err.Error() != tt.want {
			t.Errorf("%s:\n got %v\nwant %s", tt.yaml, err, tt.want)
		}
	}
}

// TestAliasesBounded: aliases that repeat values beyond the size of the
// file are refused rather than expanded.
func TestAliasesBounded(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("x: &m [" + strings.Repeat("a.example, ", 999) + "a.example]\ny: &r {match: *m}\ndestinations: [")
	b.WriteString(strings.Repeat("*r, ", 999) + "*r]\n")
	start := time.Now()
	_, err := Load("x.yaml", []byte(b.String()))
	var errs ConfigErrors
	if !errors.As(err, &errs) || !strings.Contains(err.Error(), "aliases (*name) repeat more values than the file holds") || len(errs) > 5 {
		t.Errorf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestPatternsUnmarshalYAML(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]Patterns{
		"match: a.example":              {"a.example"},
		"match: [a.example, b.example]": {"a.example", "b.example"},
		"match:\n  - a.example\n":       {"a.example"},
	} {
		var d DestinationRule
		if err := yaml.Unmarshal([]byte(text), &d); err != nil || !reflect.DeepEqual(d.Match, want) {
			t.Errorf("%q: %v, %v; want %v", text, d.Match, err, want)
		}
	}
	for _, text := range []string{"match: {a: b}", "match: [a, [b]]"} {
		var d DestinationRule
		if err := yaml.Unmarshal([]byte(text), &d); err == nil {
			t.Errorf("%q: decoded as %v, want an error", text, d.Match)
		}
	}
}
