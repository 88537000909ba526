package rules

import (
	"errors"
	"slices"
	"testing"
)

func TestServeErrors(t *testing.T) {
	t.Parallel()
	const listen = "listen:\n  socketmap: 127.0.0.1:10028\n"
	const noListener = "no listener is configured: the daemon would answer nothing (set listen.socketmap, e.g. 127.0.0.1:10028, " +
		"or listen.tcptable, listen.policy, listen.exim or listen.http)"
	const empty = "the file is empty or holds only comments: the daemon would listen nowhere and answer no rule " +
		"(start from the shipped rules.yaml, or set at least listen.socketmap: 127.0.0.1:10028)"
	unwritable := func(path string) error { return errors.New(path + " cannot be created: reason (fix)") }
	tests := []struct {
		name, config string
		writable     func(string) error
		want         ConfigErrors
	}{
		{name: "listener", config: listen},
		{name: "only http", config: "listen: {http: 127.0.0.1:10032}\n"},
		{name: "only exim", config: "listen: {exim: 127.0.0.1:10031}\n"},
		{name: "empty", config: "", want: ConfigErrors{{File: "f.yaml", Msg: empty}}},
		{name: "blank and comments", config: "\n# listen:\n#   socketmap: 127.0.0.1:10028\n   \n", want: ConfigErrors{{File: "f.yaml", Msg: empty}}},
		// An empty file says nothing else worth reporting.
		{name: "empty, state unwritable", config: "", writable: unwritable, want: ConfigErrors{{File: "f.yaml", Msg: empty}}},
		{name: "empty mapping", config: "{}\n", want: ConfigErrors{{File: "f.yaml", Line: 1, Msg: noListener}}},
		{name: "no listen key", config: "# rules\ndefaults:\n  level: may\n", want: ConfigErrors{{File: "f.yaml", Line: 2, Msg: noListener}}},
		{name: "listen without a listener", config: "defaults: {level: may}\nlisten:\n  socket_mode: \"0660\"\n",
			want: ConfigErrors{{File: "f.yaml", Line: 3, Msg: noListener}}},
		{name: "state unwritable", config: listen + "state:\n  pin_ttl: 1h\n  path: /x/state.db\n", writable: unwritable,
			want: ConfigErrors{{File: "f.yaml", Line: 5, Msg: "state.path: /x/state.db cannot be created: reason (fix)"}}},
		{name: "state unwritable, default path", config: listen + "\ndefaults: {level: may}\n", writable: unwritable,
			want: ConfigErrors{{File: "f.yaml", Line: 1, Msg: "state.path: /var/lib/tlspolicyd/state.db cannot be created: reason (fix)"}}},
		{name: "both, in line order", config: "state: {path: /x/state.db}\nlisten:\n  socket_mode: \"0660\"\n", writable: unwritable,
			want: ConfigErrors{
				{File: "f.yaml", Line: 1, Msg: "state.path: /x/state.db cannot be created: reason (fix)"},
				{File: "f.yaml", Line: 3, Msg: noListener},
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rs, err := Load("f.yaml", []byte(tc.config))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := rs.ServeErrors(tc.writable); !slices.Equal(got, tc.want) {
				t.Errorf("ServeErrors =\n%v\nwant\n%v", got, tc.want)
			}
		})
	}
}

// TestServeErrorsAsksForTheStatePath: the writability check gets the
// configured state path, and a nil check skips it.
func TestServeErrorsAsksForTheStatePath(t *testing.T) {
	t.Parallel()
	rs, err := Load("f.yaml", []byte("listen: {socketmap: \"unix:/run/t.sock\"}\nstate: {path: relative/state.db}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	if errs := rs.ServeErrors(func(path string) error { asked = append(asked, path); return nil }); errs != nil {
		t.Errorf("ServeErrors = %v, want none", errs)
	}
	if !slices.Equal(asked, []string{"relative/state.db"}) {
		t.Errorf("asked about %q, want the configured path", asked)
	}
	if errs := rs.ServeErrors(nil); errs != nil {
		t.Errorf("ServeErrors(nil) = %v, want none", errs)
	}
}
