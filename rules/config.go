package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"gopkg.in/yaml.v3"
)

// Config is the YAML configuration file as written (the README's
// "Configuration reference" and docs/interface.md list every key). Values
// stay in their written form here; Compile validates them and turns them
// into the typed Rules the engine uses, so that every mistake in a file can
// be reported at once, each with its line.
type Config struct {
	Listen         ListenConfig      `yaml:"listen"`
	HTTP           HTTPConfig        `yaml:"http"`
	Log            LogConfig         `yaml:"log"`
	DNS            DNSConfig         `yaml:"dns"`
	Probe          ProbeConfig       `yaml:"probe"`
	State          StateConfig       `yaml:"state"`
	MTASTS         MTASTSConfig      `yaml:"mtasts"`
	DANE           DANEConfig        `yaml:"dane"`
	PostfixVersion string            `yaml:"postfix_version"`
	MinimumTLS     string            `yaml:"minimum_tls"`
	Defaults       DefaultsConfig    `yaml:"defaults"`
	Destinations   []DestinationRule `yaml:"destinations"`
	Classes        []ClassConfig     `yaml:"classes"`
}

// ListenConfig names the listeners; an empty address is not started.
type ListenConfig struct {
	Socketmap string `yaml:"socketmap"`
	TCPTable  string `yaml:"tcptable"`
	Policy    string `yaml:"policy"`
	Exim      string `yaml:"exim"`
	HTTP      string `yaml:"http"`
	// SocketMode is the octal file mode of unix sockets ("0666" by
	// default, so that Postfix's unprivileged processes can connect).
	SocketMode string `yaml:"socket_mode"`
	// MaxConnections caps each protocol listener's connections; when one
	// is full, a new connection is admitted by closing an idle one.
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout closes a connection with no request for this long,
	// counted from its last request or from accept.
	IdleTimeout string `yaml:"idle_timeout"`
}

// HTTPConfig protects listen.http: the status page and the API list the
// daemon's partners, and the admin endpoints change what it enforces.
type HTTPConfig struct {
	// AuthFile holds a bearer token (surrounding whitespace ignored);
	// required when listen.http is not a loopback address.
	AuthFile string `yaml:"auth_file"`
}

// LogConfig sets up the daemon's log (log/slog, to stderr).
type LogConfig struct {
	Level     string `yaml:"level"`     // debug | info | warn | error
	Format    string `yaml:"format"`    // text | json
	Decisions string `yaml:"decisions"` // none | changes | all
}

// DNSConfig selects the resolver used for MX, MTA-STS and TLSA lookups.
type DNSConfig struct {
	Servers []string `yaml:"servers"`
	Timeout string   `yaml:"timeout"`
	// MinTTL bounds below how soon a published record (the MTA-STS TXT
	// record, TLSA records) is read again when its TTL runs out.
	MinTTL string `yaml:"min_ttl"`
}

// ProbeConfig controls the live STARTTLS probes of destinations' MX hosts.
type ProbeConfig struct {
	Port         int    `yaml:"port"`
	Helo         string `yaml:"helo"`
	Timeout      string `yaml:"timeout"`
	TTL          string `yaml:"ttl"`
	NegativeTTL  string `yaml:"negative_ttl"`
	Wait         string `yaml:"wait"`
	CAFile       string `yaml:"ca_file"`
	AllowPrivate bool   `yaml:"allow_private"`
}

// StateConfig locates the persistent store of pins and probe results.
type StateConfig struct {
	Path    string `yaml:"path"`
	PinTTL  string `yaml:"pin_ttl"`
	History string `yaml:"history"`
}

// MTASTSConfig controls RFC 8461 policies as a source.
type MTASTSConfig struct {
	Enabled bool   `yaml:"enabled"`
	CAFile  string `yaml:"ca_file"`
}

// DANEConfig controls RFC 7672 TLSA records as a source.
type DANEConfig struct {
	Enabled bool `yaml:"enabled"`
}

// DefaultsConfig applies to destinations that no rule names.
type DefaultsConfig struct {
	Level   string `yaml:"level"`
	Upgrade string `yaml:"upgrade"`
}

// DestinationRule is one entry of "destinations"; the first that matches a
// destination decides its floor.
type DestinationRule struct {
	Match    string `yaml:"match"`
	Level    string `yaml:"level"`
	Upgrade  string `yaml:"upgrade"`
	OnFail   string `yaml:"on_fail"`
	Fallback string `yaml:"fallback"`
	MTASTS   *bool  `yaml:"mtasts"`
	DANE     *bool  `yaml:"dane"`
}

// ClassConfig is a sender class: mail from these senders needs this level.
type ClassConfig struct {
	Name     string   `yaml:"name"`
	Senders  []string `yaml:"senders"`
	Level    string   `yaml:"level"`
	OnFail   string   `yaml:"on_fail"`
	Fallback string   `yaml:"fallback"`
	Message  string   `yaml:"message"`
}

// DefaultConfig returns the configuration that an empty file means. Load
// decodes a file over it, so keys left out keep these values.
func DefaultConfig() Config {
	return Config{
		Listen: ListenConfig{SocketMode: "0666", MaxConnections: 1000, IdleTimeout: "60s"},
		Log:    LogConfig{Level: "info", Format: "text", Decisions: "changes"},
		DNS:    DNSConfig{Timeout: "5s", MinTTL: "1m"},
		Probe: ProbeConfig{
			Port: 25, Timeout: "30s", TTL: "6h", NegativeTTL: "10m", Wait: "5s",
		},
		State:          StateConfig{Path: "/var/lib/tlspolicyd/state.db", PinTTL: "720h", History: "2160h"},
		MTASTS:         MTASTSConfig{Enabled: true},
		PostfixVersion: "3.7",
		MinimumTLS:     "TLSv1.2",
		Defaults:       DefaultsConfig{Level: "may", Upgrade: "encrypt"},
	}
}

// ConfigError is one problem in a configuration file, at a line.
type ConfigError struct {
	File string
	Line int // 0 when the problem has no single line
	Msg  string
}

func (e ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// ConfigErrors is every problem found in one file, in line order. Its
// Error text is one "FILE:LINE: message" line per problem.
type ConfigErrors []ConfigError

func (es ConfigErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// maxConfigSize bounds the configuration file: a policy for every domain on
// earth is still far smaller, and a runaway file must not exhaust memory.
const maxConfigSize = 64 << 20

// LoadFile reads, validates and compiles a configuration file. The error,
// if any, is a ConfigErrors naming the file as given. A relative
// state.path is resolved here, once, for everything that uses the rules:
// see ResolveStatePath ($STATE_DIRECTORY is read from the environment).
func LoadFile(path string) (*Rules, error) {
	return loadFile(path, os.Getenv(StateDirectoryEnv))
}

// loadFile is LoadFile with the value of $STATE_DIRECTORY given.
func loadFile(path, stateDirectory string) (*Rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, ConfigErrors{{File: path, Msg: readErrorMsg(err)}}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, ConfigErrors{{File: path, Msg: readErrorMsg(err)}}
	}
	if len(data) > maxConfigSize {
		return nil, ConfigErrors{{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", maxConfigSize)}}
	}
	rs, err := Load(path, data)
	if err != nil {
		return nil, err
	}
	rs.resolveStatePath(path, stateDirectory)
	return rs, nil
}

// readErrorMsg says why the configuration file could not be read and what
// to do. The file's name already starts the error line, so the cause is
// given without it.
func readErrorMsg(err error) string {
	cause := err
	var pe *fs.PathError
	if errors.As(err, &pe) {
		cause = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("cannot read the configuration: %v (write it there, or name it with -config FILE)", cause)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Sprintf("cannot read the configuration: %v (make it readable by the user running tlspolicyd)", cause)
	case errors.Is(err, syscall.EISDIR):
		return fmt.Sprintf("cannot read the configuration: %v (name the YAML file itself with -config FILE)", cause)
	}
	return fmt.Sprintf("cannot read the configuration: %v", cause)
}

// Load parses and compiles configuration data; name is used in errors.
func Load(name string, data []byte) (*Rules, error) {
	cfg, root, errs := parse(name, data)
	if len(errs) > 0 {
		return nil, errs
	}
	return Compile(name, cfg, root)
}

// parse decodes data over the defaults. It reports YAML syntax errors,
// unknown keys (with a suggestion) and type errors, each with its line.
func parse(name string, data []byte) (Config, *yaml.Node, ConfigErrors) {
	cfg := DefaultConfig()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return cfg, nil, yamlErrors(name, err)
	}
	if doc.Kind == 0 { // empty file: all defaults
		return cfg, nil, nil
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return cfg, nil, ConfigErrors{{File: name, Line: root.Line,
			Msg: "the configuration must be a mapping of keys (listen:, defaults:, destinations: ...)"}}
	}
	var errs ConfigErrors
	checkKeys(name, root, reflect.TypeOf(cfg), "", &errs)

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		reported := make(map[int]bool, len(errs))
		for _, e := range errs {
			reported[e.Line] = true
		}
		for _, e := range yamlErrors(name, err) {
			if !reported[e.Line] { // checkKeys already explained unknown keys
				errs = append(errs, e)
			}
		}
	}
	sortErrors(errs)
	return cfg, root, errs
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlErrors turns a yaml.v3 error into ConfigErrors with line numbers.
func yamlErrors(name string, err error) ConfigErrors {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs ConfigErrors
	for _, m := range msgs {
		e := ConfigError{File: name, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sub := yamlLineRE.FindStringSubmatch(m); sub != nil {
			e.Line, _ = strconv.Atoi(sub[1])
			e.Msg = sub[2]
		}
		errs = append(errs, e)
	}
	return errs
}

func sortErrors(errs ConfigErrors) {
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
}

// checkKeys walks the YAML tree against the schema type and reports every
// key the schema does not have, suggesting the closest valid key.
func checkKeys(file string, n *yaml.Node, t reflect.Type, path string, errs *ConfigErrors) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				*errs = append(*errs, ConfigError{File: file, Line: k.Line,
					Msg: unknownKeyMsg(path, k.Value, fields)})
				continue
			}
			checkKeys(file, v, ft, joinPath(path, k.Value), errs)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			checkKeys(file, item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = f.Type
		}
	}
	return fields
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func unknownKeyMsg(path, key string, fields map[string]reflect.Type) string {
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	best, dist := "", 3 // suggest only close spellings
	for _, name := range names {
		if d := editDistance(strings.ToLower(key), name); d < dist {
			best, dist = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key %q %s; did you mean %q?", key, where, best)
	}
	return fmt.Sprintf("unknown key %q %s; valid keys are %s", key, where, strings.Join(names, ", "))
}

// editDistance is the Levenshtein distance, for "did you mean" hints.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// writtenLine is the line of the value at path if the file writes it
// there, else 0: unlike lineOf, it never points at a parent instead.
func writtenLine(root *yaml.Node, path ...any) int {
	if root == nil {
		return 0
	}
	n := root
	for _, p := range path {
		var next *yaml.Node
		switch p := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			return 0
		}
		n = next
	}
	return n.Line
}

// lineOf finds the line of the value at path (mapping keys as strings,
// sequence indexes as ints) in the YAML tree. It returns the line of the
// deepest node it could reach, so a key left out points at its parent.
func lineOf(root *yaml.Node, path ...any) int {
	if root == nil {
		return 0
	}
	n := root
	for _, p := range path {
		next := (*yaml.Node)(nil)
		switch p := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return n.Line
}
