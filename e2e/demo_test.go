// Package e2e runs emu the way a user does, on the real demo stack: build
// the image (mmdebstrap, QEMU provisioning, compression), then boot it until
// every service is healthy. Slow (minutes under TCG); skipped with -short.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/cli"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
)

func TestDemoBuildAndVerify(t *testing.T) {
	vmtest.Skip(t)
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("e2e needs mmdebstrap")
		}
		t.Skip("e2e needs mmdebstrap")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// The demo's own binary, as `make demo-api` builds it, into a copy of
	// the example so the test writes nothing into the source tree.
	demo := t.TempDir()
	for _, f := range []string{"emu.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "examples/demo", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(demo, f), b, 0o644)
	}
	gobuild(t, root, filepath.Join(demo, "bin/demo-api"), "./examples/demo/cmd/demo-api")

	home := t.TempDir()
	t.Setenv("EMU_HOME", home)
	t.Setenv("EMU_AGENT", vmtest.Agent(t))
	// The root filesystem cache outlives the test: a Debian tree is the
	// slow part, and its key covers everything that goes into it.
	cache := filepath.Join(vmtest.CacheDir(t), "rootfs")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(home, "cache"), 0o755)
	if err := os.Symlink(cache, store.At(home).RootfsCache()); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	stack := filepath.Join(demo, "emu.yaml")
	out := t.TempDir()
	stdout, stderr, code := run(ctx, "build", "-f", stack, "--out", out, "--json")
	if code != 0 {
		t.Fatalf("emu build exited %d:\n%s", code, stderr)
	}
	evs := decode(t, stdout)
	st := event.FoldAll(evs)
	if !st.Done || st.Failed {
		t.Fatalf("build stream: done=%v failed=%v err=%s", st.Done, st.Failed, st.Err)
	}
	for _, step := range []string{"create-db", "migrate", "seed"} {
		found := false
		for _, it := range st.Steps {
			if it.Name == step && it.State == event.Succeeded {
				found = true
			}
		}
		if !found {
			t.Errorf("bake step %s did not succeed", step)
		}
	}
	dir := filepath.Join(out, "demo")
	man, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(man.Services) != 3 || man.Files[store.BundleDisk].Size == 0 {
		t.Errorf("manifest: %d services, disk %d bytes", len(man.Services), man.Files[store.BundleDisk].Size)
	}
	t.Logf("bundle: disk %d bytes; stages %+v", man.Files[store.BundleDisk].Size, man.Stages)

	stdout, stderr, code = run(ctx, "verify", dir, "--json")
	if code != 0 {
		t.Fatalf("emu verify exited %d:\n%s", code, stderr)
	}
	vst := event.FoldAll(decode(t, stdout))
	if !vst.Ready {
		t.Fatalf("verify never saw ready: %+v", vst.Services)
	}
	for _, s := range vst.Services {
		if s.State != event.Healthy {
			t.Errorf("service %s is %s", s.Name, s.State)
		}
	}
}

func run(ctx context.Context, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := cli.Main(ctx, args, &out, &errb)
	return out.String(), errb.String(), code
}

func decode(t *testing.T, s string) []event.Event {
	t.Helper()
	var evs []event.Event
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var e event.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("--json output line %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func gobuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
}
