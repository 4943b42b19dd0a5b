package stats

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
)

// Provenance is what a benchmark prints first, after flag.Parse, so that a figure
// copied from its output can be traced and run again: the command, with every
// flag's value spelled out (a default changed later does not change what the line
// means), and the commit of the working tree it ran in.
func Provenance() string {
	return fmt.Sprintf("# reproduce: %s\n# commit: %s\n", command(mainPackage(), flag.CommandLine), commit())
}

// command is `go run <pkg>` with every flag of fs as -name=value, shell-quoted.
func command(pkg string, fs *flag.FlagSet) string {
	args := []string{"go", "run", pkg}
	fs.VisitAll(func(f *flag.Flag) { // in name order
		args = append(args, "-"+f.Name+"="+shellQuote(f.Value.String()))
	})
	return strings.Join(args, " ")
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:,@%+=-]+$`)

func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// mainPackage is the running program as a path relative to the module root
// (./bench/decisions), which is what `go run` from the root takes; the binary's
// own name when the build carries no module information.
func mainPackage() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Path != "" {
		if rel, ok := strings.CutPrefix(bi.Path, bi.Main.Path+"/"); ok {
			return "./" + rel
		}
	}
	return filepath.Base(os.Args[0])
}

// commit is `git rev-parse --short HEAD`, marked when tracked files differ from
// it (the figures then belong to no commit); "unknown" outside a git checkout.
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown (git rev-parse failed)"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += " with uncommitted changes"
	}
	return c
}
