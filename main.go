// Command tlspolicyd tells a mail server how outbound mail to each
// destination must be protected by TLS. It answers Postfix's
// smtp_tls_policy_maps lookups (socketmap and tcp_table) from YAML rules, so
// that mail which must be encrypted is never sent in plaintext.
//
// Usage (docs/interface.md has the details):
//
//	tlspolicyd [serve] [-config FILE]
//	tlspolicyd check   [-config FILE] [-postfix DIR]
//	tlspolicyd query   [-config FILE] [-sender ADDR] DESTINATION
//	tlspolicyd probe   [-config FILE] [-json] DOMAIN
//	tlspolicyd pins    [-config FILE] list [-json] | add [-force] DOMAIN LEVEL | remove DOMAIN
//	tlspolicyd import-postfix FILE
//	tlspolicyd version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/buildinfo"
	"github.com/tlspolicyd/tlspolicyd/internal/ratelog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/tlspolicyd/tlspolicyd/fleet"
	"github.com/tlspolicyd/tlspolicyd/policyd"
	"github.com/tlspolicyd/tlspolicyd/postfixlint"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

const defaultConfig = "./rules.yaml"

// shutdownGrace is how long SIGTERM waits for requests in flight.
const shutdownGrace = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (len(args[0]) > 0 && args[0][0] != '-' || isHelp(args[0])) {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "check":
		return check(args, stdout, stderr)
	case "query":
		return query(args, stdout, stderr)
	case "probe":
		return probe(args, stdout, stderr)
	case "pins":
		return pins(args, stdout, stderr)
	case "history":
		return history(args, stdout, stderr)
	case "report":
		return reportCmd(args, stdout, stderr)
	case "import-postfix":
		return importPostfix(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, buildinfo.Read())
		return 0
	}
	if isHelp(cmd) {
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "tlspolicyd: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

// isHelp reports whether an argument asks for the usage.
func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "-help" || arg == "--help"
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  tlspolicyd [serve] [-config FILE]         run the daemon (default FILE: ./rules.yaml)
  tlspolicyd check   [-config FILE] [-postfix DIR]
                                            validate; exit 0 if valid, 1 and "FILE:LINE: message" lines if not;
                                            with -postfix also lint the Postfix configuration in DIR (as
                                            postconf -c DIR sees it) against the rules: "warning:" lines, exit 0
  tlspolicyd query   [-config FILE] [-sender ADDR] [-json] DESTINATION
                                            decide once, as the daemon would, probing live if needed;
                                            print the answer and why (rule, probe evidence, pin ...)
  tlspolicyd probe   [-config FILE] [-json] DOMAIN
                                            probe now and print what was found per MX host
  tlspolicyd pins    [-config FILE] list [-json] | add [-force] DOMAIN LEVEL | remove DOMAIN
                                            show or change pins (directly, or through a running daemon)
  tlspolicyd history [-config FILE] [-json] DESTINATION
                                            every change of the answers for DESTINATION, newest first:
                                            time, map, answer, previous answer, rule, evidence
  tlspolicyd report  [-config FILE] [-format csv|json|html] [-o FILE]
                                            the TLS posture of every destination the daemon knows
  tlspolicyd import-postfix FILE            print the destination rules (YAML) that do what a Postfix TLS
                                            policy table (the source of smtp_tls_policy_maps) did; say on
                                            stderr what they cannot carry over (exit 1 then)
  tlspolicyd version                        "tlspolicyd VERSION (REVISION, GOVERSION)"
  tlspolicyd help | -h | --help             this usage

history, report and pins ask the running daemon over listen.http when it runs, else read the
state file. Flags come before the other arguments.
`)
}

// flags parses the common -config flag (and any extra flags set up by
// add) and returns the positional arguments.
func flags(name string, args []string, stderr io.Writer, add func(*flag.FlagSet)) (string, []string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", defaultConfig, "configuration `file`")
	if add != nil {
		add(fs)
	}
	if err := fs.Parse(args); err != nil {
		return "", nil, false
	}
	return *config, fs.Args(), true
}

// command parses a subcommand's flags (-config and those add sets up),
// checks that it got nargs arguments (-1: at least one), and loads the
// configuration. An exit code of 0 or more means it failed and said why on
// stderr; the command ends with that code.
func command(name, usage string, args []string, nargs int, stderr io.Writer, add func(*flag.FlagSet)) (*rules.Rules, []string, int) {
	config, rest, ok := flags(name, args, stderr, add)
	if !ok || nargs >= 0 && len(rest) != nargs || nargs < 0 && len(rest) == 0 {
		fmt.Fprintln(stderr, usage)
		return nil, nil, 2
	}
	p, err := rules.LoadFile(config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, nil, 1
	}
	return p, rest, -1
}

// loadServeConfig validates the configuration as serve needs it, the same
// for serve and check, and prints its errors on stderr.
func loadServeConfig(config string, stderr io.Writer) (*rules.Rules, bool) {
	p, err := policyd.LoadConfig(config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, false
	}
	return p, true
}

// check exits 1 exactly when serve would refuse the configuration. With
// -postfix it also lints the Postfix configuration against the rules;
// its findings are warnings and leave the exit status 0.
func check(args []string, stdout, stderr io.Writer) int {
	var postfixDir string
	config, rest, ok := flags("check", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&postfixDir, "postfix", "", "also check the Postfix configuration in `dir` (as postconf -c DIR sees it) against the rules")
	})
	if !ok || len(rest) > 0 {
		fmt.Fprintln(stderr, "usage: tlspolicyd check [-config FILE] [-postfix DIR]")
		return 2
	}
	p, ok := loadServeConfig(config, stderr)
	if !ok {
		return 1
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(stderr, "%s (warning)\n", w)
	}
	fmt.Fprintf(stdout, "%s: valid (%d destination rules, %d sender classes)\n", config, len(p.Rules), len(p.Classes))
	if postfixDir == "" {
		return 0
	}
	return checkPostfix(p, postfixDir, stdout, stderr)
}

// postfixCheckTimeout bounds `check -postfix`: postconf and postmap read
// local files, each run bounded on its own as well.
const postfixCheckTimeout = 2 * time.Minute

// checkPostfix lints the Postfix configuration in dir against the rules
// and prints one "warning:" line per finding. Only a configuration that
// cannot be read fails the command.
func checkPostfix(p *rules.Rules, dir string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), postfixCheckTimeout)
	defer cancel()
	pf, err := postfixlint.Read(ctx, dir, postfixlint.Tools{})
	if err != nil {
		fmt.Fprintf(stderr, "tlspolicyd: cannot read the Postfix configuration in %s: %v (name the directory that holds main.cf and master.cf, e.g. -postfix /etc/postfix)\n", dir, err)
		return 1
	}
	findings := postfixlint.Lint(ctx, p, pf)
	for _, f := range findings {
		fmt.Fprintln(stdout, f)
	}
	noun := "warnings"
	if len(findings) == 1 {
		noun = "warning"
	}
	fmt.Fprintf(stdout, "%s: Postfix %s checked against %s: %d %s\n", dir, pf.MailVersion, p.File, len(findings), noun)
	return 0
}

func query(args []string, stdout, stderr io.Writer) int {
	var sender string
	var asJSON bool
	p, rest, code := command("query", "usage: tlspolicyd query [-config FILE] [-sender ADDR] [-json] DESTINATION", args, 1, stderr,
		func(fs *flag.FlagSet) {
			fs.StringVar(&sender, "sender", "", "envelope sender `address` (picks the sender class)")
			fs.BoolVar(&asJSON, "json", false, "print the answer and its evidence as JSON (the API's fields)")
		})
	if code >= 0 {
		return code
	}
	gatherer, ok := newGatherer(p, stderr)
	if !ok {
		return 1
	}
	cache := policyd.NewFindingsCache(p.Settings, gatherer, policyd.ProbeDeps{}, nil, nil)
	defer cache.Close()
	e := policyd.NewEngine(p, cache)
	// The daemon's pins count too: read them from the store, or from the
	// daemon if it holds the store.
	if list, err := readPins(p.Settings); err == nil {
		e.UsePins(list, p.Settings.PinTTL)
	} else {
		fmt.Fprintln(stderr, "tlspolicyd: pins not read:", err)
	}
	// Unlike the daemon, which answers the floor after probe.wait and lets
	// the probe finish for the next lookup, query waits for the whole probe
	// so that it can show the evidence.
	d := e.Decide(context.Background(), rest[0], sender, p.Settings.ProbeTimeout+time.Second)
	if asJSON {
		if code := printJSON(stdout, stderr, e.ViewOf(rest[0], d)); code != 0 || !d.Found() {
			return max(code, 1)
		}
		return 0
	}
	mapName := rules.MapTLSPolicy
	if d.Class != nil {
		mapName = d.Class.Name
	}
	answer := "NOTFOUND"
	if d.Found() {
		answer = d.Answer.Text
	} else if d.Answer.Status != wire.StatusNotFound {
		answer = fmt.Sprintf("%s %s", d.Answer.Status, d.Answer.Text)
	}
	fmt.Fprintf(stdout, "%s: %s\n", rest[0], answer)
	if d.Key.Kind != 0 {
		fmt.Fprintf(stdout, "  key:     %s (%s)\n", d.Key, d.Key.Kind)
	}
	fmt.Fprintf(stdout, "  map:     %s\n", mapName)
	fmt.Fprintf(stdout, "  why:     %s\n", d.Explain())
	if sender != "" && d.Key.Kind == rules.KeyDomain {
		v := e.CheckRecipient(context.Background(), sender, "postmaster@"+d.Key.Name)
		fmt.Fprintf(stdout, "  at RCPT: %s\n", v.Render())
	}
	if d.Probed() {
		fmt.Fprintln(stdout)
		printFindings(stdout, *d.Findings, p.Settings.MinTLSVersion)
	}
	if !d.Found() {
		return 1
	}
	return 0
}

// newGatherer builds what gathers findings live, for query and probe; it
// reports errors on stderr.
func newGatherer(p *rules.Rules, stderr io.Writer) (*policyd.Gatherer, bool) {
	g, err := policyd.NewGatherer(p.Settings, policyd.ProbeDeps{})
	if err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return nil, false
	}
	return g, true
}

func serve(args []string, stderr io.Writer) int {
	config, rest, ok := flags("serve", args, stderr, nil)
	if !ok || len(rest) > 0 {
		fmt.Fprintln(stderr, "usage: tlspolicyd serve [-config FILE]")
		return 2
	}
	p, ok := loadServeConfig(config, stderr)
	if !ok {
		slog.New(slog.NewTextHandler(stderr, nil)).Error("configuration is invalid; not starting", "config", config)
		return 1
	}
	var level slog.LevelVar // a reload may change it
	level.Set(p.Settings.LogLevel)
	log, limiter := newLogger(stderr, p.Settings.LogFormat, &level)
	// The count of warnings suppressed in the current interval would
	// otherwise go with the process.
	defer limiter.Flush()

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	if p.Settings.Redis.Enabled() {
		redis.SetLogger(fleet.LibraryLogger{Log: log})
	}
	d, err := policyd.NewDaemon(p, policyd.Options{Registerer: reg, Gatherer: reg, Logger: log})
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}

	// Subscribe before listening so that a signal sent as soon as the
	// ports answer is not lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	if err := d.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	for _, w := range p.Warnings {
		// Each is a different warning under one message, and there are
		// only as many as the file has: none may be held back.
		log.WarnContext(ratelog.Unlimited(context.Background()), "configuration", "warning", w.Error())
	}
	build := buildinfo.Read()
	log.Info("tlspolicyd started", "version", build.Version, "revision", build.Revision, "config", config,
		"rules", len(p.Rules), "classes", len(p.Classes))
	// Start has bound every listener: connections are accepted (queued by
	// the kernel until a server takes them) from here on.
	notify := sdNotifier{log: log}
	notify.ready(fmt.Sprintf("serving %d rules from %s", len(p.Rules), config))

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			notify.reloading()
			if err := d.Reload(); err != nil {
				log.Error("configuration reload refused; the running rules stay in force", "config", config, "err", err,
					"fix", "correct the file (tlspolicyd check -config "+config+" lists every problem), then reload again")
				notify.ready(fmt.Sprintf("serving %d rules; the last reload of %s was refused (see the log)",
					len(d.Engine.Rules().Rules), config))
			} else {
				level.Set(d.Engine.Rules().Settings.LogLevel)
				log.Info("configuration reloaded", "config", config, "rules", len(d.Engine.Rules().Rules))
				notify.ready(fmt.Sprintf("serving %d rules from %s", len(d.Engine.Rules().Rules), config))
			}
			continue
		}
		log.Info("shutting down", "signal", sig.String())
		notify.stopping()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		err := d.Shutdown(ctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Error("shutdown", "err", err)
		}
		return 0
	}
	return 0
}

// newLogger is the daemon's log: slog to stderr, as text or JSON, at a
// level that a reload may change, with repeated warnings and errors
// rate-limited (a flood of bad requests must not fill the disk). The
// limiter's Flush writes the summaries still pending.
func newLogger(w io.Writer, format string, level *slog.LevelVar) (*slog.Logger, *ratelog.Handler) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	limiter := ratelog.New(h, ratelog.Options{})
	return slog.New(limiter), limiter
}
