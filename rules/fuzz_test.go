package rules

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzLoad loads arbitrary bytes as a configuration file. Load must never
// panic, and must give either rules or an error, never both or neither.
// An error is a ConfigErrors whose every entry names the file, a line
// (0 when no line applies) and a message, sorted by line; loading the
// same bytes again gives the same text, so that `check` and a refused
// reload say the same thing. Rules that load answer for their own
// patterns: each destination rule's pattern (and, for a .parent rule, a
// subdomain of it) is matched by that rule or an earlier one, and every
// level renders a policy. The seeds are the shipped rules.yaml, the bad
// configurations of testdata/bad and testdata/fuzz/FuzzLoad. Match files
// come from fuzzMatchFiles, never from the disk: an error may then name
// one of them instead of the configuration, and is listed at the line of
// the configuration that names it.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/bad/*.yaml")
	for _, file := range append(seeds, "../rules.yaml") {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	const name = "fuzz.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := load(name, data, readFuzzMatchFile)
		if (p == nil) == (err == nil) {
			t.Fatalf("Load = %v, %v: want rules or an error", p, err)
		}
		if err != nil {
			checkLoadError(t, name, err)
			if _, again := load(name, data, readFuzzMatchFile); again == nil || again.Error() != err.Error() {
				t.Fatalf("loaded again:\n%v\nfirst:\n%v", again, err)
			}
			return
		}
		if p.File != name || p.Defaults == nil {
			t.Fatalf("rules of %q: file %q, defaults %v", name, p.File, p.Defaults)
		}
		for l := LevelNone; l <= LevelDaneOnly; l++ {
			if text := p.PolicyText(l); !strings.HasPrefix(text, l.String()) {
				t.Fatalf("level %v renders %q", l, text)
			}
		}
		for i, r := range p.Rules {
			if r.Index != i || r.Line < 1 || r.File != name {
				t.Fatalf("rule %d: index %d, at %s", i, r.Index, r.Ref())
			}
			for _, e := range r.Patterns() {
				if e.Index != i || e.Line < 1 || e.File != name && fuzzMatchFiles[e.File] == "" {
					t.Fatalf("rule %d: entry %q: index %d, at %s", i, e.Match, e.Index, e.Ref())
				}
				checkOwnPattern(t, p, e)
			}
		}
		for _, c := range p.Classes {
			if c.Line < 1 || p.Class(c.Name) != c {
				t.Fatalf("class %q: line %d, found by name: %v", c.Name, c.Line, p.Class(c.Name) == c)
			}
		}
	})
}

// checkLoadError checks that err is a non-empty, sorted ConfigErrors
// naming file, with a message each.
func checkLoadError(t *testing.T, file string, err error) {
	t.Helper()
	var errs ConfigErrors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("error %T %v, want ConfigErrors", err, err)
	}
	for _, e := range errs {
		if e.File != file && fuzzMatchFiles[e.File] == "" || e.Line < 0 || strings.TrimSpace(e.Msg) == "" {
			t.Fatalf("error %q: file %q, line %d, message %q", e.Error(), e.File, e.Line, e.Msg)
		}
	}
	if !slices.IsSortedFunc(errs, func(a, b ConfigError) int {
		switch {
		case a.less(b):
			return -1
		case b.less(a):
			return 1
		}
		return 0
	}) {
		t.Fatalf("errors not in line order:\n%v", err)
	}
}

// fuzzMatchFiles are the match files FuzzLoad's configurations can name.
var fuzzMatchFiles = map[string]string{
	"partners.txt": "# partners\npartner-a.example\n\n.partner-b.example  # and subdomains\n[relay.partner.example]:587\n",
	"bad.txt":      "*.example.com\na.example b.example\n\xff\n",
	"dup.txt":      "partner-a.example\nPARTNER-A.example.\n",
	"empty.txt":    "# nothing yet\n",
}

func readFuzzMatchFile(path string) ([]byte, error) {
	data, ok := fuzzMatchFiles[path]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return []byte(data), nil
}

// checkOwnPattern checks that entry r, or an earlier rule, matches r's
// own pattern, and that a .parent pattern matches a subdomain of its
// parent.
func checkOwnPattern(t *testing.T, p *Rules, r *Rule) {
	t.Helper()
	keys := []string{r.Match}
	if strings.HasPrefix(r.Match, ".") {
		keys = append(keys, "sub"+r.Match)
	}
	for _, raw := range keys {
		k, err := ParseKey(raw)
		if err != nil {
			if raw == r.Match {
				t.Fatalf("rule %d's pattern %q loaded but does not parse: %v", r.Index, raw, err)
			}
			continue // "sub" made the name too long
		}
		got := p.Match(k)
		if got == nil || got.Index < 0 || got.Index > r.Index {
			t.Fatalf("key %q (from rule %d's pattern %q) is matched by %+v, want rule %d or an earlier one", raw, r.Index, r.Match, got, r.Index)
		}
	}
}
