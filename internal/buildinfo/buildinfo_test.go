package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestFrom(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build information", nil, false, "tlspolicyd unknown (unknown, "},
		{"release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}}}, true,
			"tlspolicyd v1.2.0 (0123456789ab, go1.26.8)"},
		{"modified source build", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "fedcba9876543210"}, {Key: "vcs.modified", Value: "true"}}}, true,
			"tlspolicyd unknown (fedcba987654-dirty, go1.26.8)"},
		{"no VCS", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261204120000-abcdefabcdef"}}, true,
			"tlspolicyd v0.0.0-20261204120000-abcdefabcdef (unknown, go1.26.8)"},
	} {
		got := from(tc.bi, tc.ok).String()
		if tc.name == "no build information" {
			if len(got) < len(tc.want) || got[:len(tc.want)] != tc.want {
				t.Errorf("%s: %q, want it to start with %q", tc.name, got, tc.want)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
