package kubernetes_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"
)

// TestDockerfile parses the Dockerfile with BuildKit's own parser (no engine runs
// here) and checks it against the repository and the manifests: the targets the
// manifests' images name exist, the Go and CLI versions are the ones the project
// pins, every command is in the image, and the images run as non-root.
func TestDockerfile(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	var lintErrs []string
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, _ []parser.Range) {
		lintErrs = append(lintErrs, rule+": "+msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(lintErrs) > 0 {
		t.Errorf("BuildKit's linter: %v", lintErrs)
	}
	byName := map[string]instructions.Stage{}
	var order []string
	for _, s := range stages {
		byName[s.Name] = s
		order = append(order, s.Name)
		for _, c := range s.Commands {
			if cp, ok := c.(*instructions.CopyCommand); ok && cp.From != "" && !slices.Contains(order[:len(order)-1], cp.From) {
				t.Errorf("stage %s copies from %q, which is not an earlier stage", s.Name, cp.From)
			}
		}
	}

	// The targets the kustomization's images name, with their pinned versions.
	kb, err := os.ReadFile(filepath.Join("base", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k types.Kustomization
	if err := yaml.UnmarshalStrict(kb, &k); err != nil {
		t.Fatalf("base/kustomization.yaml: %v", err)
	}
	for _, img := range k.Images {
		s, ok := byName[img.Name]
		if !ok {
			t.Errorf("image %q of the manifests is no Dockerfile target (stages %v)", img.Name, order)
			continue
		}
		user, entrypoint := "", false
		for _, c := range s.Commands {
			switch c := c.(type) {
			case *instructions.UserCommand:
				user = c.User
			case *instructions.EntrypointCommand:
				entrypoint = true
			}
		}
		if user == "" || strings.HasPrefix(user, "root") || strings.HasPrefix(user, "0") {
			t.Errorf("target %s runs as %q, want a non-root USER", img.Name, user)
		}
		if !entrypoint {
			t.Errorf("target %s has no ENTRYPOINT", img.Name)
		}
	}

	// Go: the build stage's toolchain is go.mod's.
	gomod, _ := os.ReadFile(filepath.Join("..", "..", "go.mod"))
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if build, ok := byName["build"]; !ok || goVersion == nil || !strings.HasPrefix(build.BaseName, "golang:"+string(goVersion[1])) {
		t.Errorf("the build stage is FROM %q; go.mod wants go %s", byName["build"].BaseName, goVersion[1])
	}
	// Every command under cmd/ is copied into the climesh image, and every
	// command the manifests run is one of them.
	var copied []string
	for _, c := range byName["climesh"].Commands {
		if cp, ok := c.(*instructions.CopyCommand); ok && cp.From == "build" {
			for _, p := range cp.SourcePaths {
				copied = append(copied, filepath.Base(p))
			}
		}
	}
	cmds, _ := os.ReadDir(filepath.Join("..", "..", "cmd"))
	for _, c := range cmds {
		if c.IsDir() && !slices.Contains(copied, c.Name()) {
			t.Errorf("cmd/%s is not copied into the climesh image (copied: %v)", c.Name(), copied)
		}
	}
	m := render(t, "base")
	for _, w := range m.workloads() {
		for _, c := range allContainers(&w.pod.Spec) {
			if len(c.Command) > 0 && strings.HasPrefix(c.Command[0], "/usr/local/bin/") && !slices.Contains(copied, filepath.Base(c.Command[0])) {
				t.Errorf("%s/%s runs %s, which the climesh image does not have", w.name, c.Name, c.Command[0])
			}
		}
	}

	// The CLI: the version tools/install.sh pins, and the image tag the manifests use.
	install, _ := os.ReadFile(filepath.Join("..", "..", "tools", "install.sh"))
	pinned := regexp.MustCompile(`(?m)^COPILOT_VERSION=(\S+)`).FindSubmatch(install)
	var arg string
	for _, c := range byName["copilot-cli"].Commands {
		if a, ok := c.(*instructions.ArgCommand); ok {
			for _, kv := range a.Args {
				if kv.Key == "COPILOT_VERSION" && kv.Value != nil {
					arg = *kv.Value
				}
			}
		}
	}
	for _, c := range byName["copilot-cli"].Commands {
		if e, ok := c.(*instructions.EntrypointCommand); ok && (len(e.CmdLine) < 3 || !strings.HasSuffix(e.CmdLine[0], "tini") || e.CmdLine[2] != "/usr/local/bin/copilot-cli") {
			t.Errorf("the copilot-cli entrypoint %q is not tini running the native CLI: the pod's SIGTERM would not reach the CLI", e.CmdLine)
		}
	}
	if pinned == nil || arg != string(pinned[1]) {
		t.Errorf("the copilot-cli target installs %q; tools/install.sh pins %q", arg, pinned[1])
	}
	for _, img := range k.Images {
		if img.Name == "copilot-cli" && img.NewTag != arg {
			t.Errorf("the manifests run copilot-cli:%s; the Dockerfile builds %s", img.NewTag, arg)
		}
	}
}
