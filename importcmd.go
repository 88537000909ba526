package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/tlspolicyd/tlspolicyd/policytable"
)

const importUsage = "usage: tlspolicyd import-postfix FILE   (FILE: the source of a Postfix TLS policy table, - for standard input)"

// importPostfix prints the destination rules that do what a Postfix TLS
// policy table did, and says on stderr, as "FILE:LINE: ..." lines, what
// they cannot carry over. It exits 0 when the rules do exactly what the
// table did, 1 when something could not be carried over (the rules are
// still printed) or the file cannot be read, 2 on a usage error.
func importPostfix(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("import-postfix", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, importUsage)
		return 2
	}
	name := fs.Arg(0)
	var in io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(stderr, "tlspolicyd:", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	entries, problems, err := policytable.Parse(in)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	res := policytable.Convert(entries, problems)
	if err := policytable.WriteYAML(stdout, name, res); err != nil {
		fmt.Fprintln(stderr, "tlspolicyd:", err)
		return 1
	}
	// In the order of the file, whatever the order of the rules.
	type message struct {
		line int
		text string
	}
	var msgs []message
	for _, s := range res.Skipped {
		msgs = append(msgs, message{s.Line, "skipped: " + s.Msg})
	}
	for _, r := range res.Rules {
		for _, l := range r.Lost {
			msgs = append(msgs, message{r.Entry.Line, r.Entry.Key + ": not carried over: " + l})
		}
		for _, n := range r.Notes {
			msgs = append(msgs, message{r.Entry.Line, r.Entry.Key + ": note: " + n})
		}
	}
	sort.SliceStable(msgs, func(i, j int) bool { return msgs[i].line < msgs[j].line })
	for _, m := range msgs {
		fmt.Fprintf(stderr, "%s:%d: %s\n", name, m.line, m.text)
	}
	if !res.Exact() {
		fmt.Fprintf(stderr, "%s: the rules do not do all that the table did (above). To keep a line as it is, keep it in a Postfix table listed before the daemon's map in smtp_tls_policy_maps: that table then answers for its keys.\n", name)
		return 1
	}
	return 0
}
