// Package testlog collects what a component logs during a test, so that
// the test can assert on it (a warning given, a secret not written) and
// print it when the test fails; and it checks log lines for attributes
// written twice.
package testlog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Buffer is a concurrency-safe log sink.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything logged so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger returns a text logger at debug level that writes to b.
func (b *Buffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// DuplicateKeys returns the attribute keys that one line of log/slog
// output, in its text or its JSON format, carries more than once (each
// once, in the order of their second appearance). A logger that adds an
// attribute with With and again at the call site writes it twice, which
// log shippers resolve by keeping one value or by rejecting the line.
// Lines that are not slog output give nil.
func DuplicateKeys(line string) []string {
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "{"):
		return jsonDuplicates(line)
	case strings.HasPrefix(line, "time="):
		return textDuplicates(line)
	}
	return nil
}

// dupSet records keys and the ones seen twice.
type dupSet struct {
	seen map[string]bool
	dups *[]string
}

func (s dupSet) add(key string) {
	if s.seen[key] && !slices.Contains(*s.dups, key) {
		*s.dups = append(*s.dups, key)
	}
	s.seen[key] = true
}

// textDuplicates parses key=value pairs as slog.TextHandler writes them:
// keys of groups are dotted, and a key or value is quoted when it holds a
// space, a quote, "=" or an unprintable character.
func textDuplicates(line string) []string {
	var dups []string
	keys := dupSet{seen: map[string]bool{}, dups: &dups}
	s := line
	for {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			return dups
		}
		var key string
		if s[0] == '"' {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return dups
			}
			key, _ = strconv.Unquote(q)
			s = s[len(q):]
		} else {
			i := strings.IndexAny(s, "= ")
			if i < 0 || s[i] != '=' {
				return dups
			}
			key, s = s[:i], s[i:]
		}
		if !strings.HasPrefix(s, "=") {
			return dups
		}
		s = s[1:]
		if s != "" && s[0] == '"' {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return dups
			}
			s = s[len(q):]
		} else if i := strings.IndexByte(s, ' '); i >= 0 {
			s = s[i:]
		} else {
			s = ""
		}
		keys.add(key)
	}
}

// jsonDuplicates walks the JSON tokens of line, checking the keys of each
// object apart (a group is an object of its own).
func jsonDuplicates(line string) []string {
	type frame struct {
		object, wantKey bool
		keys            dupSet
	}
	var dups []string
	var stack []*frame
	dec := json.NewDecoder(strings.NewReader(line))
	for {
		tok, err := dec.Token()
		if err != nil { // io.EOF at the end
			return dups
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey {
			if key, ok := tok.(string); ok {
				top.keys.add(key)
				top.wantKey = false
				continue
			}
		}
		if top != nil && top.object {
			top.wantKey = true // after this value, a key or the end
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, wantKey: true, keys: dupSet{seen: map[string]bool{}, dups: &dups}})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		}
	}
}
