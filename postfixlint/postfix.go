package postfixlint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// Tools names the Postfix programs Read runs. An empty path is looked up
// on PATH, then in /usr/sbin (often not on an unprivileged PATH).
type Tools struct {
	Postconf string
	Postmap  string
}

// commandTimeout bounds one postconf or postmap run: they read local files
// only, so anything longer is a hang.
const commandTimeout = 30 * time.Second

// Config is what Read learned of one Postfix configuration directory.
type Config struct {
	// Dir is the configuration directory as given.
	Dir string
	// MailVersion is mail_version ("3.7.11"); Version its major.minor.
	MailVersion string
	Version     rules.Version
	// QueueDirectory is queue_directory: a chrooted smtp(8) names a unix
	// socket relative to it.
	QueueDirectory string

	DefaultTransport string // default_transport
	Relayhost        string // relayhost

	TransportMaps       []*Table // transport_maps
	SenderTransportMaps []*Table // sender_dependent_default_transport_maps
	SenderRelayhostMaps []*Table // sender_dependent_relayhost_maps
	PolicyMaps          []*Table // smtp_tls_policy_maps

	// ParentMatchesSubdomains is set when parent_domain_matches_subdomains
	// lists transport_maps: a transport entry "example.com" then covers
	// its subdomains too, and ".example.com" is not looked up.
	ParentMatchesSubdomains bool

	// Services are master.cf's services, in file order.
	Services []Service

	postmap string
}

// Service is one master.cf service.
type Service struct {
	Name, Type string
	// Command is the program, e.g. "smtp" for the SMTP client.
	Command string
	// PolicyMaps is the service's -o smtp_tls_policy_maps; PolicyMapsSet
	// says whether it has one (without it, main.cf's applies).
	PolicyMaps    []*Table
	PolicyMapsSet bool
}

// MainCF and MasterCF are the configuration files, for messages.
func (c *Config) MainCF() string   { return filepath.Join(c.Dir, "main.cf") }
func (c *Config) MasterCF() string { return filepath.Join(c.Dir, "master.cf") }

// Service returns the master.cf service that delivers mail for a transport
// name (type unix), or nil.
func (c *Config) Service(name string) *Service {
	for i := range c.Services {
		if s := &c.Services[i]; s.Name == name && s.Type == "unix" {
			return s
		}
	}
	return nil
}

// params are the main.cf parameters Read asks postconf for.
var params = []string{
	"mail_version", "queue_directory", "default_transport", "relayhost",
	"transport_maps", "sender_dependent_default_transport_maps",
	"sender_dependent_relayhost_maps", "smtp_tls_policy_maps",
	"parent_domain_matches_subdomains",
}

// Read learns the Postfix configuration in dir as `postconf -c dir` sees it,
// and reads the source files of the tables that matter to TLS policy
// lookups. It fails when postconf cannot read main.cf or master.cf.
func Read(ctx context.Context, dir string, tools Tools) (*Config, error) {
	postconf, err := findTool(tools.Postconf, "postconf")
	if err != nil {
		return nil, err
	}
	postmap, err := findTool(tools.Postmap, "postmap")
	if err != nil {
		return nil, err
	}
	c := &Config{Dir: dir, postmap: postmap}

	out, err := run(ctx, postconf, append([]string{"-c", dir, "-x"}, params...)...)
	if err != nil {
		return nil, err
	}
	p := parseAssignments(out)
	c.MailVersion = p["mail_version"]
	if c.Version, err = majorMinor(c.MailVersion); err != nil {
		return nil, err
	}
	c.QueueDirectory = p["queue_directory"]
	c.DefaultTransport = p["default_transport"]
	c.Relayhost = p["relayhost"]
	main := c.MainCF() + " "
	c.TransportMaps = parseTables(p["transport_maps"], main+"transport_maps")
	c.SenderTransportMaps = parseTables(p["sender_dependent_default_transport_maps"], main+"sender_dependent_default_transport_maps")
	c.SenderRelayhostMaps = parseTables(p["sender_dependent_relayhost_maps"], main+"sender_dependent_relayhost_maps")
	c.PolicyMaps = parseTables(p["smtp_tls_policy_maps"], main+"smtp_tls_policy_maps")
	for _, name := range splitList(p["parent_domain_matches_subdomains"]) {
		if name == "transport_maps" {
			c.ParentMatchesSubdomains = true
		}
	}

	if out, err = run(ctx, postconf, "-c", dir, "-M"); err != nil {
		return nil, err
	}
	c.Services = parseServices(out)
	if out, err = run(ctx, postconf, "-c", dir, "-P", "-x"); err != nil {
		return nil, err
	}
	for key, value := range parseAssignments(out) {
		// service/type/parameter
		parts := strings.Split(key, "/")
		if len(parts) != 3 || parts[2] != "smtp_tls_policy_maps" {
			continue
		}
		for i := range c.Services {
			if s := &c.Services[i]; s.Name == parts[0] && s.Type == parts[1] {
				s.PolicyMaps = parseTables(value, c.MasterCF()+" "+s.Name+" -o smtp_tls_policy_maps")
				s.PolicyMapsSet = true
			}
		}
	}

	for _, list := range [][]*Table{c.TransportMaps, c.SenderTransportMaps, c.SenderRelayhostMaps, c.PolicyMaps} {
		for _, t := range list {
			if err := t.readSource(); err != nil {
				return nil, fmt.Errorf("reading a table of %s: %w", t.Param, err)
			}
		}
	}
	for _, s := range c.Services {
		for _, t := range s.PolicyMaps {
			if err := t.readSource(); err != nil {
				return nil, fmt.Errorf("reading a table of %s: %w", t.Param, err)
			}
		}
	}
	return c, nil
}

// findTool returns path, or finds a Postfix program by name.
func findTool(path, name string) (string, error) {
	if path != "" {
		return path, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	sbin := "/usr/sbin/" + name
	if _, err := os.Stat(sbin); err == nil {
		return sbin, nil
	}
	return "", fmt.Errorf("%s (Postfix) not found on PATH or in /usr/sbin: checking a Postfix configuration needs Postfix's own %s", name, name)
}

// run runs a Postfix program and returns its standard output. Its warnings
// on standard error (such as unused parameters) are no failure; its exit
// status is, with what it said.
func run(ctx context.Context, prog string, args ...string) (string, error) {
	return runInput(ctx, "", prog, args...)
}

// runInput is run with stdin as the program's standard input.
func runInput(ctx context.Context, stdin, prog string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return "", fmt.Errorf("%s %s: no answer within %v", prog, strings.Join(args, " "), commandTimeout)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return stdout.String(), &commandError{cmd: prog + " " + strings.Join(args, " "), msg: msg, exit: exitCode(err)}
	}
	return stdout.String(), nil
}

// commandError is a Postfix program that failed, with what it said.
type commandError struct {
	cmd, msg string
	exit     int
}

// Error is what the program said, which names it ("postconf: fatal: ..."),
// else the command and its status.
func (e *commandError) Error() string {
	if strings.Contains(e.msg, filepath.Base(strings.Fields(e.cmd)[0])+":") {
		return e.msg
	}
	return e.cmd + ": " + e.msg
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// parseAssignments reads "name = value" lines as postconf prints them.
func parseAssignments(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		m[strings.TrimSpace(name)] = strings.TrimSpace(value)
	}
	return m
}

// parseServices reads postconf -M output: one service per line, "name type
// private unpriv chroot wakeup maxproc command args...".
func parseServices(out string) []Service {
	var ss []Service
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		ss = append(ss, Service{Name: f[0], Type: f[1], Command: f[7]})
	}
	return ss
}

var versionRE = regexp.MustCompile(`^(\d+)\.(\d+)`)

// majorMinor reads the release of a mail_version: "3.7.11" and snapshots
// like "3.10-20240926" give 3.7 and 3.10.
func majorMinor(v string) (rules.Version, error) {
	m := versionRE.FindStringSubmatch(v)
	if m == nil {
		return rules.Version{}, fmt.Errorf("postconf mail_version is %q, not a Postfix release like 3.7.11", v)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return rules.Version{Major: major, Minor: minor}, nil
}

// query asks a table for every key at once with postmap -q -, as the
// Postfix daemons would look each up, and returns the values of the keys
// it has (by the key as asked).
func (c *Config) query(ctx context.Context, t *Table, keys []string) (map[string]string, error) {
	found := map[string]string{}
	if len(keys) == 0 {
		return found, nil
	}
	out, err := runInput(ctx, strings.Join(keys, "\n")+"\n", c.postmap, "-c", c.Dir, "-q", "-", t.Spec)
	var ce *commandError
	if errors.As(err, &ce) && ce.exit == 1 && !strings.Contains(ce.msg, "fatal") {
		return found, nil // none found
	}
	if err != nil {
		return nil, err
	}
	asked := make(map[string]string, len(keys))
	for _, k := range keys {
		asked[strings.ToLower(k)] = k
	}
	for _, line := range strings.Split(out, "\n") {
		key, value, ok := strings.Cut(line, "\t")
		if k, known := asked[strings.ToLower(key)]; ok && known {
			found[k] = value
		}
	}
	return found, nil
}
