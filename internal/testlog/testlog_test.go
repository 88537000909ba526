package testlog

import (
	"bytes"
	"log/slog"
	"slices"
	"testing"
)

func TestDuplicateKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, line string
		want       []string
	}{
		{"text, unique", `time=2026-01-02T03:04:05Z level=WARN msg="bad request" protocol=socketmap remote=127.0.0.1:5`, nil},
		{"text, twice", `time=2026-01-02T03:04:05Z level=WARN msg=x protocol=socketmap protocol=socketmap remote=a`, []string{"protocol"}},
		{"text, quoted values hide nothing", `time=t level=INFO msg="a protocol=b" err="x \"protocol=y\" z" protocol=p`, nil},
		{"text, three times listed once", `time=t msg=m a=1 a=2 a=3`, []string{"a"}},
		{"text, quoted key", `time=t msg=m "a b"=1 "a b"=2`, []string{"a b"}},
		{"text, groups are dotted", `time=t msg=m g.a=1 a=2 g.a=3`, []string{"g.a"}},
		{"text, empty value", `time=t msg=m a= b=1 a=`, []string{"a"}},
		{"json, unique", `{"time":"t","level":"WARN","msg":"m","protocol":"socketmap","g":{"protocol":"x"}}`, nil},
		{"json, twice", `{"time":"t","msg":"m","protocol":"a","n":[1,{"protocol":2}],"protocol":"a"}`, []string{"protocol"}},
		{"json, in a group", `{"msg":"m","g":{"a":1,"a":2},"a":3}`, []string{"a"}},
		{"json, string values are not keys", `{"msg":"m","a":"msg","b":["a","a"]}`, nil},
		{"not slog output", `goroutine 1 [running]: a=1 a=1`, nil},
	} {
		if got := DuplicateKeys(tc.line); !slices.Equal(got, tc.want) {
			t.Errorf("%s: DuplicateKeys(%s) = %q, want %q", tc.name, tc.line, got, tc.want)
		}
	}
}

// TestDuplicateKeysOfSlog checks the parser against what slog writes: a
// logger that adds an attribute with With and again at the call site.
func TestDuplicateKeysOfSlog(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		var h slog.Handler = slog.NewTextHandler(&buf, nil)
		if format == "json" {
			h = slog.NewJSONHandler(&buf, nil)
		}
		log := slog.New(h).With("protocol", "socketmap", "remote", "127.0.0.1:1")
		log.Warn("once", "err", "a b=c")
		log.Warn("twice", "protocol", "socketmap", "err", "x")
		lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
		if got := DuplicateKeys(string(lines[0])); got != nil {
			t.Errorf("%s: %s: duplicates %q, want none", format, lines[0], got)
		}
		if got := DuplicateKeys(string(lines[1])); !slices.Equal(got, []string{"protocol"}) {
			t.Errorf("%s: %s: duplicates %q, want [protocol]", format, lines[1], got)
		}
	}
}
