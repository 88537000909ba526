package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Bounds of a match file: far above any list of partners a postmaster
// keeps by hand, but a file named by mistake (a log, a mail spool, a
// device) is refused rather than read into memory.
const (
	maxMatchFileSize  = 1 << 20
	maxMatchFileLines = 100000
)

// errMatchFileSize is returned by readMatchFile for a file over the bound.
var errMatchFileSize = fmt.Errorf("larger than %d bytes (1 MiB)", maxMatchFileSize)

// readMatchFile reads a match file, refusing one that is not a regular
// file (a FIFO would block the load, and a reload with it) or is larger
// than maxMatchFileSize.
func readMatchFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMatchFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxMatchFileSize {
		return nil, errMatchFileSize
	}
	return data, nil
}

// matchFile compiles the patterns of a rule's match_file, at path in the
// configuration. Each pattern becomes an entry that cites its own line of
// the file, so that the answers it gives and the problems it has point
// there. The file is read on every load, so a reload (SIGHUP) reads it
// again.
func (c *compiler) matchFile(p *Rules, r *Rule, path []any) {
	file := r.MatchFile
	if !filepath.IsAbs(file) {
		file = filepath.Join(filepath.Dir(c.file), file)
	}
	data, err := c.read(file)
	var pe *fs.PathError
	switch {
	case errors.Is(err, errMatchFileSize) || err == nil && len(data) > maxMatchFileSize:
		c.errorf(path, "%s: %s is larger than 1 MiB (split it into several files, each named by a rule of its own)", pathString(path), file)
		return
	case errors.As(err, &pe):
		c.errorf(path, "%s: cannot read %s: %v (write one pattern per line into it; a relative path is taken from the folder of %s)",
			pathString(path), file, pe.Err, c.file)
		return
	case err != nil:
		c.errorf(path, "%s: cannot read %s: %v (name a regular file holding one pattern per line)", pathString(path), file, err)
		return
	case lineCount(data) > maxMatchFileLines:
		c.errorf(path, "%s: %s has more than %d lines (split it into several files, each named by a rule of its own)",
			pathString(path), file, maxMatchFileLines)
		return
	}
	data = bytes.TrimPrefix(data, []byte("\uFEFF")) // a byte order mark some editors write
	n := 0
	for line := 1; len(data) > 0; line++ {
		var text []byte
		text, data, _ = bytes.Cut(data, []byte{'\n'})
		if i := bytes.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		if text = bytes.TrimSpace(text); len(text) == 0 {
			continue
		}
		e := r.entry(string(text), file, line)
		if bytes.ContainsAny(text, " \t") {
			c.errs = append(c.errs, c.fileError(e, fmt.Sprintf("%q: write one pattern per line and nothing else "+
				"(the rule that names this file sets the level)", text)))
			continue
		}
		c.index(p, e, nil)
		n++
	}
	if n == 0 {
		c.warnings = append(c.warnings, ConfigError{File: c.file, Line: lineOf(c.root, path...), Msg: fmt.Sprintf(
			"%s: %s holds no pattern, so this rule matches nothing (write one pattern per line, e.g. partner.example)", pathString(path), file)})
	}
}

// lineCount is the number of lines in data, the last one counted whether
// or not a newline ends it.
func lineCount(data []byte) int {
	n := bytes.Count(data, []byte{'\n'})
	if len(data) > 0 && data[len(data)-1] != '\n' {
		n++
	}
	return n
}
