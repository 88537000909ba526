// Package buildinfo says which build of tlspolicyd is running, from the
// Go build information: for the version command, the status page and the
// tlspolicyd_build_info metric, so that all three agree.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Info identifies a build.
type Info struct {
	Version   string // the module version ("v1.2.0", or a pseudo-version for a source build), or "unknown"
	Revision  string // the VCS revision (12 hex digits, "-dirty" if modified), or "unknown"
	GoVersion string // the Go release it was built with, e.g. "go1.26.8"
}

// Read returns the running binary's build information.
func Read() Info { return from(debug.ReadBuildInfo()) }

// from is Read for given build information (ok false: none).
func from(bi *debug.BuildInfo, ok bool) Info {
	info := Info{Version: "unknown", Revision: "unknown", GoVersion: runtime.Version()}
	if !ok {
		return info
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		info.Version = v
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value[:min(len(s.Value), 12)]
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && info.Revision != "unknown" {
		info.Revision += "-dirty"
	}
	return info
}

// String is the version command's line: "tlspolicyd VERSION (REVISION,
// GOVERSION)".
func (i Info) String() string {
	return "tlspolicyd " + i.Version + " (" + i.Revision + ", " + i.GoVersion + ")"
}
