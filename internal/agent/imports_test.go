package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/emu-dev/emu"

type listedPackage struct {
	ImportPath string
	Standard   bool
}

// deps lists pkg and everything it imports, for a linux guest build.
func deps(t *testing.T, pkg string) []listedPackage {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not found: %v", err)
	}
	cmd := exec.Command(gobin, "list", "-deps", "-json=ImportPath,Standard", pkg)
	cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatalf("go list -deps %s listed nothing", pkg)
	}
	return pkgs
}

// TestImports keeps the guest side small and apart from the host side: the
// agent binary must not grow QEMU, YAML or terminal code.
func TestImports(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	t.Run("event is stdlib only", func(t *testing.T) {
		for _, p := range deps(t, module+"/internal/event") {
			if !p.Standard && p.ImportPath != module+"/internal/event" {
				t.Errorf("internal/event depends on %s; it must import only the standard library", p.ImportPath)
			}
		}
	})
	t.Run("agent imports only event from emu", func(t *testing.T) {
		allowed := []string{module + "/internal/agent", module + "/internal/event"}
		for _, p := range deps(t, module+"/internal/agent") {
			if strings.HasPrefix(p.ImportPath, module+"/") && !slices.Contains(allowed, p.ImportPath) {
				t.Errorf("internal/agent depends on %s; from emu it may import only internal/event", p.ImportPath)
			}
		}
	})
	t.Run("emu-agent links no host code", func(t *testing.T) {
		var forbidden []string
		for _, name := range []string{"build", "cli", "qemu", "machine", "spec", "progress", "doctor", "accel"} {
			forbidden = append(forbidden, module+"/internal/"+name)
		}
		for _, p := range deps(t, module+"/cmd/emu-agent") {
			if slices.Contains(forbidden, p.ImportPath) {
				t.Errorf("cmd/emu-agent depends on %s, host-side code", p.ImportPath)
			}
		}
	})
}
