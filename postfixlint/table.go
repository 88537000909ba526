package postfixlint

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// Table is one "type:name" lookup table of a Postfix table list.
type Table struct {
	// Spec is the table as listed, after $name expansion, such as
	// "hash:/etc/postfix/transport".
	Spec string
	// Type and Name split Spec; a proxy: prefix is removed from Type,
	// since proxymap(8) answers from the same table.
	Type, Name string
	// Param is where the table is listed, for messages:
	// "/etc/postfix/main.cf transport_maps",
	// "/etc/postfix/master.cf smtp-phi -o smtp_tls_policy_maps".
	Param string
	// Source is the text file the entries were read from ("" when there
	// is none: the table is asked with postmap -q instead).
	Source string
	// Entries are the source file's entries, in file order.
	Entries []Entry
	// Stale says why what Postfix reads may differ from Source (its
	// database is missing or older), "" when it is current.
	Stale string

	// index finds an entry by its lower-cased key (the first of equal
	// keys, as postmap keeps it).
	index map[string]Entry
}

// Entry is one "key value" line of a table's source file.
type Entry struct {
	Key, Value string
	Line       int
}

// Where names an entry for messages: "/etc/postfix/transport:3".
func (t *Table) Where(e Entry) string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d", t.Source, e.Line)
	}
	return t.Spec
}

// find returns the entry for key in the source entries (Postfix folds the
// case of keys in indexed tables).
func (t *Table) find(key string) (Entry, bool) {
	if t.index == nil {
		t.index = make(map[string]Entry, len(t.Entries))
		for _, e := range t.Entries {
			if k := strings.ToLower(e.Key); !hasKey(t.index, k) {
				t.index[k] = e
			}
		}
	}
	e, ok := t.index[strings.ToLower(key)]
	return e, ok
}

func hasKey(m map[string]Entry, k string) bool {
	_, ok := m[k]
	return ok
}

// indexedTypes are the table types that postmap(1) builds from a text
// file, which is named by the table's name; texthash reads that text file
// itself.
var indexedTypes = map[string]bool{
	"hash": true, "btree": true, "lmdb": true, "cdb": true, "dbm": true, "sdbm": true, "texthash": true,
}

// patternTypes are matched against the whole address (transport(5),
// "REGULAR EXPRESSION TABLES"): never looked up by domain.
var patternTypes = map[string]bool{"regexp": true, "pcre": true}

// remoteTypes are served by another program or host. They are not asked:
// a lookup may be slow or have effects, and those that name the daemon
// are recognised by their address instead.
var remoteTypes = map[string]bool{
	"socketmap": true, "tcp": true, "ldap": true, "mysql": true, "pgsql": true,
	"memcache": true, "nis": true, "nisplus": true, "netinfo": true,
}

// parseTable splits a "type:name" table.
func parseTable(spec, param string) *Table {
	t := &Table{Spec: spec, Param: param}
	rest := spec
	for {
		typ, name, ok := strings.Cut(rest, ":")
		if !ok {
			t.Type = rest
			return t
		}
		if typ == "proxy" {
			rest = name
			continue
		}
		t.Type, t.Name = typ, name
		return t
	}
}

// splitList splits a Postfix list value at commas and white space, keeping
// a "{ ... }" group (as in inline:{ a=b, c=d }) in one piece.
func splitList(s string) []string {
	var out []string
	var cur strings.Builder
	depth := 0
	flush := func() {
		if cur.Len() > 0 {
			out = append(out, cur.String())
			cur.Reset()
		}
	}
	for _, r := range s {
		switch {
		case r == '{':
			depth++
		case r == '}' && depth > 0:
			depth--
		case depth == 0 && (r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			flush()
			continue
		}
		cur.WriteRune(r)
	}
	flush()
	return out
}

// parseTables parses a table list parameter.
func parseTables(value, param string) []*Table {
	var ts []*Table
	for _, spec := range splitList(value) {
		ts = append(ts, parseTable(spec, param))
	}
	return ts
}

// maxSourceSize bounds a table source file read into memory: transport and
// relay tables are small, and a huge file is better asked with postmap.
const maxSourceSize = 16 << 20

// readSource reads the entries of an indexed table's source file, if it
// has one: the file named by the table (postmap builds NAME.db from NAME).
// A missing file is no error; the table is then asked with postmap.
func (t *Table) readSource() error {
	if !indexedTypes[t.Type] || t.Name == "" {
		return nil
	}
	f, err := os.Open(t.Name)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil // e.g. a directory: leave it to postmap
	}
	entries, err := parseSource(io.LimitReader(f, maxSourceSize))
	if err != nil {
		return fmt.Errorf("%s: %w", t.Name, err)
	}
	t.Source, t.Entries = t.Name, entries
	if suffix := databaseSuffixes[t.Type]; suffix != "" {
		src, _ := f.Stat()
		switch db, err := os.Stat(t.Name + suffix); {
		case err != nil:
			t.Stale = fmt.Sprintf("has no database %s%s, so Postfix cannot open the table", t.Name, suffix)
		case src != nil && src.ModTime().After(db.ModTime()):
			t.Stale = fmt.Sprintf("was changed after its database %s%s was built, so Postfix still uses the entries from before the change", t.Name, suffix)
		}
	}
	return nil
}

// databaseSuffixes name the file postmap(1) builds from a source, by
// table type (texthash has none: Postfix reads the text itself).
var databaseSuffixes = map[string]string{
	"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag", "sdbm": ".pag",
}

// parseSource reads postmap(1) input: "key whitespace value" lines, "#"
// comment lines, empty lines, and lines starting with white space that
// continue the previous one.
func parseSource(r io.Reader) ([]Entry, error) {
	var entries []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || trimmed[0] == '#':
			continue
		case line[0] == ' ' || line[0] == '\t':
			if len(entries) > 0 {
				last := &entries[len(entries)-1]
				last.Value = strings.TrimSpace(last.Value + " " + trimmed)
			}
			continue
		}
		key, value, _ := strings.Cut(trimmed, " ")
		if k, v, ok := strings.Cut(trimmed, "\t"); ok && len(k) < len(key) {
			key, value = k, v
		}
		entries = append(entries, Entry{Key: key, Value: strings.TrimSpace(value), Line: n})
	}
	return entries, sc.Err()
}
