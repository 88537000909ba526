// Command mkdeb builds the tlspolicyd Debian package with nfpm, from
// contrib/deb/nfpm.yaml: the binary as /usr/sbin/tlspolicyd, the systemd
// unit, the shipped rules.yaml as the conffile /etc/tlspolicyd/rules.yaml,
// the documentation and the contrib examples, and the maintainer scripts
// of contrib/deb.
//
// Run it from the repository root:
//
//	go run ./tools/mkdeb -version 1.2.0 -o dist/
//
// Without -binary it builds tlspolicyd itself (go build -trimpath, no cgo,
// for -arch). It prints the path of the package it wrote.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are mkdeb's flags.
type options struct {
	config  string // the nfpm configuration
	root    string // what relative sources in it are relative to
	binary  string // the tlspolicyd binary; empty: build one
	version string // the package version
	arch    string // Go's name of the architecture
	out     string // a directory, or the package file
	// compression overrides the configuration's deb.compression
	// (nfpm's "gzip:LEVEL", "xz", "zstd:LEVEL" or "none").
	compression string
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("mkdeb", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.config, "config", "contrib/deb/nfpm.yaml", "nfpm configuration `file`")
	fs.StringVar(&o.root, "root", ".", "repository root `dir`: sources in the configuration are relative to it")
	fs.StringVar(&o.binary, "binary", "", "tlspolicyd binary to package (default: build one for -arch)")
	fs.StringVar(&o.version, "version", "0.0.0~dev", "package `version` (Debian syntax; a leading v is dropped)")
	fs.StringVar(&o.arch, "arch", runtime.GOARCH, "target architecture, as GOARCH names it")
	fs.StringVar(&o.out, "o", ".", "output directory, or package file name ending in .deb")
	fs.StringVar(&o.compression, "compression", "", "override the configuration's compression (gzip:1 builds fastest, for tests)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: mkdeb [-config FILE] [-root DIR] [-binary FILE] [-version VERSION] [-arch GOARCH] [-compression C] [-o DIR|FILE.deb]")
		return 2
	}
	path, err := build(o)
	if err != nil {
		fmt.Fprintln(stderr, "mkdeb:", err)
		return 1
	}
	fmt.Fprintln(stdout, path)
	return 0
}

// debVersion is what dpkg accepts as an upstream version without an epoch
// or a revision: a digit first, then alphanumerics and . + ~.
var debVersion = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

// build writes the package and returns its path.
func build(o options) (string, error) {
	version := strings.TrimPrefix(o.version, "v")
	if !debVersion.MatchString(version) {
		return "", fmt.Errorf("-version %q: a Debian version starts with a digit and holds only letters, digits and . + ~", o.version)
	}
	root, err := filepath.Abs(o.root)
	if err != nil {
		return "", err
	}
	binary := o.binary
	if binary == "" {
		dir, err := os.MkdirTemp("", "mkdeb-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "tlspolicyd")
		if err := goBuild(root, binary, o.arch); err != nil {
			return "", err
		}
	}
	if binary, err = filepath.Abs(binary); err != nil {
		return "", err
	}
	if fi, err := os.Stat(binary); err != nil {
		return "", fmt.Errorf("-binary: %w", err)
	} else if fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("-binary: %s is not executable", binary)
	}

	vars := map[string]string{"VERSION": version, "ARCH": o.arch, "BINARY": binary}
	config, err := nfpm.ParseFileWithEnvMapping(filepath.Join(root, o.config), func(name string) string { return vars[name] })
	if err != nil {
		return "", fmt.Errorf("%s: %w", o.config, err)
	}
	info, err := config.Get("deb")
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	if o.compression != "" {
		info.Deb.Compression = o.compression
	}
	// nfpm takes relative sources from the working directory; mkdeb takes
	// them from the repository root, wherever it runs.
	for _, c := range info.Contents {
		if c.Source != "" && !filepath.IsAbs(c.Source) {
			c.Source = filepath.Join(root, c.Source)
		}
	}
	for _, s := range []*string{&info.Scripts.PreInstall, &info.Scripts.PostInstall, &info.Scripts.PreRemove, &info.Scripts.PostRemove} {
		if *s != "" && !filepath.IsAbs(*s) {
			*s = filepath.Join(root, *s)
		}
	}
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", err
	}

	target := o.out
	if !strings.HasSuffix(target, ".deb") {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return "", err
		}
		target = filepath.Join(target, deb.Default.ConventionalFileName(info))
	}
	info.Target = target
	f, err := os.Create(target)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(target)
		return "", err
	}
	return target, nil
}

// goBuild builds tlspolicyd from the module at root for arch, as shipped:
// no race detector, no cgo (the binary depends on no C library), and
// -trimpath so that it names no path of the build machine.
func goBuild(root, out, arch string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, b)
	}
	if _, err := os.Stat(out); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("go build wrote no %s", out)
	}
	return nil
}
