package postfixlint

import (
	"fmt"
	"strings"
)

// versionFeature is a Postfix release from which the daemon's answers
// change (rules.RenderPolicy, and the rendering of MTA-STS answers).
type versionFeature struct {
	major, minor int
	// mtasts is set when only answers decided by an MTA-STS policy carry
	// the attribute.
	mtasts bool
	// newer is what answers carry from this release on, older what they
	// carry before it.
	newer, older string
}

var versionFeatures = []versionFeature{
	{3, 4, true, "servername=hostname on MTA-STS answers", "no servername= (no SNI) on MTA-STS answers"},
	{3, 6, false, "protocols=>=TLSv1.2", "protocols=!SSLv2:!SSLv3:... (the same floor as a list of exclusions)"},
	{3, 10, true, "the TLSRPT attributes policy_type=sts, policy_domain, mx_host_pattern and policy_string on MTA-STS answers", "no TLSRPT attributes"},
}

// version compares postfix_version with the installed Postfix. Answers
// for a newer release than the installed one may carry attributes it
// cannot parse, and it defers that mail; answers for an older one leave
// out what it could use.
func (l *linter) version() {
	conf, inst := l.rs.Settings.PostfixVersion, l.pf.Version
	if conf == inst {
		return
	}
	line := l.settingLine("postfix_version")
	setting := fmt.Sprintf("postfix_version %s", conf)
	if line == 0 {
		setting = fmt.Sprintf("postfix_version (not set: %s)", conf)
	}
	lo, hi := conf, inst // the older and the newer release
	if conf.AtLeast(inst.Major, inst.Minor) {
		lo, hi = inst, conf
	}
	var newer, older []string
	for _, f := range versionFeatures {
		if f.mtasts && !l.rs.Settings.MTASTSEnabled {
			continue
		}
		if hi.AtLeast(f.major, f.minor) && !lo.AtLeast(f.major, f.minor) {
			newer = append(newer, fmt.Sprintf("%s (Postfix %d.%d and later)", f.newer, f.major, f.minor))
			older = append(older, f.older)
		}
	}
	where := fmt.Sprintf("postconf -c %s mail_version = %s", l.pf.Dir, l.pf.MailVersion)
	fix := fmt.Sprintf("set postfix_version: %q", inst.String())
	switch {
	case len(newer) == 0:
		l.add("version", line, where,
			"%s, but the Postfix in %s is %s (%s): the answers are the same for both releases, but keep the setting true; %s",
			setting, l.pf.Dir, inst, where, fix)
	case !inst.AtLeast(conf.Major, conf.Minor):
		l.add("version", line, where,
			"%s, but the Postfix in %s is only %s (%s): the daemon answers with %s, which Postfix %s cannot parse, and it defers that mail (4.7.5); %s",
			setting, l.pf.Dir, inst, where, strings.Join(newer, "; "), inst, fix)
	default:
		l.add("version", line, where,
			"%s, but the Postfix in %s is %s (%s): the daemon answers with %s instead of %s, which Postfix %s could use; %s",
			setting, l.pf.Dir, inst, where, strings.Join(older, "; "), strings.Join(newer, "; "), inst, fix)
	}
}
