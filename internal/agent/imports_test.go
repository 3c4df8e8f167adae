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

// deps lists pkg and everything it imports, for goos.
func deps(t *testing.T, goos, pkg string) []listedPackage {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not found: %v", err)
	}
	cmd := exec.Command(gobin, "list", "-deps", "-json=ImportPath,Standard", pkg)
	cmd.Env = append(os.Environ(), "GOOS="+goos, "CGO_ENABLED=0")
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
// agent binary must not grow QEMU, YAML or terminal code. It checks an
// allowlist, for Linux and macOS (the host side builds for both; a file
// for one OS must not pull host code into the shared packages). go list
// answers in well under a second, so it runs under -short too.
func TestImports(t *testing.T) {
	// What each guest-side package may import from emu, itself included.
	allow := map[string][]string{
		"internal/event": {"internal/event"},
		"internal/proto": {"internal/proto"},
		"internal/agent": {"internal/agent", "internal/event", "internal/proto"},
		"cmd/emu-agent":  {"cmd/emu-agent", "internal/agent", "internal/event", "internal/proto"},
	}
	for _, goos := range []string{"linux", "darwin"} {
		for pkg, allowed := range allow {
			if goos == "darwin" && pkg == "cmd/emu-agent" {
				continue // the agent runs only in Linux guests
			}
			t.Run(goos+"/"+pkg, func(t *testing.T) {
				for _, p := range deps(t, goos, module+"/"+pkg) {
					if p.Standard {
						continue
					}
					rel, ours := strings.CutPrefix(p.ImportPath, module+"/")
					switch {
					case !ours && pkg == "cmd/emu-agent" && p.ImportPath == "golang.org/x/sys/unix":
					case !ours && pkg == "internal/agent" && p.ImportPath == "golang.org/x/sys/unix":
					case !ours:
						t.Errorf("%s depends on %s; outside the standard library it may use only golang.org/x/sys/unix (agent)", pkg, p.ImportPath)
					case !slices.Contains(allowed, rel):
						t.Errorf("%s depends on %s; from emu it may import only %s", pkg, rel, strings.Join(allowed, ", "))
					}
				}
			})
		}
	}
}
