package rules

import (
	"fmt"
	"path/filepath"
	"strings"
)

// StateDirectoryEnv is the environment variable in which systemd gives a
// service the folder of its StateDirectory= (several, separated by colons,
// when the unit names several).
const StateDirectoryEnv = "STATE_DIRECTORY"

// ResolveStatePath is where the state file of a configuration file lives:
// state.path as written when it is absolute; a relative one is taken from
// stateDirectory ($STATE_DIRECTORY; its first folder) when that is set,
// else from the configuration file's folder. So one shipped file works
// both ways: under systemd the state lands in the StateDirectory= that
// systemd creates and owns for the service's user, and for anyone running
// the daemon by hand, next to the configuration they can write. from says
// which folder a relative path was taken from ("" for an absolute one),
// for messages about the file.
func ResolveStatePath(written, configFile, stateDirectory string) (path, from string) {
	if written == "" || filepath.IsAbs(written) {
		return written, ""
	}
	if dir, _, _ := strings.Cut(stateDirectory, ":"); dir != "" {
		return filepath.Join(dir, written), "$" + StateDirectoryEnv + " (" + dir + ")"
	}
	dir := filepath.Dir(configFile)
	return filepath.Join(dir, written), "the configuration file's folder (" + dir + ")"
}

// resolveStatePath puts the resolved state.path in the settings, absolute
// so that log lines and errors name the file whatever the working
// directory, and notes how a relative one was resolved for ServeErrors.
func (rs *Rules) resolveStatePath(configFile, stateDirectory string) {
	written := rs.Settings.StatePath
	path, from := ResolveStatePath(written, configFile, stateDirectory)
	if from == "" {
		return
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	rs.Settings.StatePath = path
	rs.serve.statePathFrom = fmt.Sprintf("%q is taken from %s", written, from)
}
