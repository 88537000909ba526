package rules

import "fmt"

// What the daemon needs of a configuration beyond valid keys. A one-shot
// command (query, probe) works from any valid file, but the daemon cannot
// start without a listener or a state file it can write; and a reload that
// accepted what a start refuses would let an emptied file drop every rule.

// serveFacts are what Compile notes of the file for ServeErrors, which
// runs after the YAML tree is gone.
type serveFacts struct {
	empty         bool // no YAML node at all: the file is empty or only comments
	listenLine    int  // where to point when no listener is set
	statePathLine int  // where to point when the state file cannot be written
	// statePathFrom says where a relative state.path was taken from
	// ("" for an absolute one), since the path in errors is the resolved one.
	statePathFrom string
}

// ServeErrors reports what keeps the daemon from starting with these rules
// although every key in them is valid: a file that sets nothing (empty or
// only comments), no listener, and a state file that cannot be written.
// writable says why the state file at a path could not be opened or
// created for writing (nil: it can); rules does no such I/O itself, and a
// nil writable skips that check. Each error names the file and line.
func (rs *Rules) ServeErrors(writable func(path string) error) ConfigErrors {
	var errs ConfigErrors
	if l := rs.Settings.Listen; l.Socketmap == "" && l.TCPTable == "" && l.Policy == "" && l.Exim == "" && l.HTTP == "" {
		if rs.serve.empty { // nothing else in it is worth reporting
			return ConfigErrors{{File: rs.File, Msg: "the file is empty or holds only comments: the daemon would " +
				"listen nowhere and answer no rule (start from the shipped rules.yaml, or set at least " +
				"listen.socketmap: 127.0.0.1:10028)"}}
		}
		errs = append(errs, ConfigError{File: rs.File, Line: rs.serve.listenLine, Msg: "no listener is configured: " +
			"the daemon would answer nothing (set listen.socketmap, e.g. 127.0.0.1:10028, or listen.tcptable, " +
			"listen.policy, listen.exim or listen.http)"})
	}
	if writable != nil {
		if err := writable(rs.Settings.StatePath); err != nil {
			msg := fmt.Sprintf("state.path: %v", err)
			if rs.serve.statePathFrom != "" {
				msg = fmt.Sprintf("state.path %s: %v", rs.serve.statePathFrom, err)
			}
			errs = append(errs, ConfigError{File: rs.File, Line: rs.serve.statePathLine, Msg: msg})
		}
	}
	sortErrors(errs)
	return errs
}
