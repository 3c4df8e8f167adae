package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/vmtest"
)

// TestDemoArm64 builds the demo for arm64 from its stack file with emu
// build --arch arm64 (the tree through qemu-user's binfmt handler, the
// provisioning and boot check on -machine virt under TCG) and runs it: the
// API answers from the host. It is opt-in, EMU_E2E_ARM64=1: on our
// two-core machine it takes about as long as every other test together
// (bench/arch/run measures the same build beside the amd64 one).
func TestDemoArm64(t *testing.T) {
	if os.Getenv("EMU_E2E_ARM64") == "" {
		t.Skip("EMU_E2E_ARM64=1 runs the arm64 demo build (long under TCG)")
	}
	root := needDebian(t)
	vmtest.SkipArch(t, "arm64")
	demo := t.TempDir()
	b, err := os.ReadFile(filepath.Join(root, "examples/demo/emu.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(demo, "emu.yaml"), b, 0o644)
	gobuildArch(t, root, filepath.Join(demo, "bin/linux-arm64/demo-api"), "./examples/demo/cmd/demo-api", "arm64")
	gobuildArch(t, root, filepath.Join(demo, "bin/linux-amd64/demo-api"), "./examples/demo/cmd/demo-api", "amd64")
	newHome(t)
	t.Setenv("EMU_AGENT", vmtest.AgentFor(t, "arm64"))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	out := t.TempDir()
	start := time.Now()
	if _, stderr, code := run(ctx, "build", "-f", filepath.Join(demo, "emu.yaml"), "--arch", "arm64", "--out", out); code != 0 {
		t.Fatalf("emu build --arch arm64 exited %d:\n%s", code, stderr)
	}
	t.Logf("arm64 build: %s", time.Since(start).Round(time.Second))
	dir := filepath.Join(out, "demo.arm64")
	man, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if man.Arch != "arm64" {
		t.Fatalf("manifest arch %q", man.Arch)
	}
	port := freePort(t)
	t.Cleanup(func() { run(context.Background(), "down", dir, "--poweroff") })
	if _, stderr, code := run(ctx, "up", dir, "--port=api.http="+strconv.Itoa(port),
		"--port=postgres.sql="+strconv.Itoa(freePort(t)), "--port=valkey.resp="+strconv.Itoa(freePort(t))); code != 0 {
		t.Fatalf("emu up (arm64) exited %d:\n%s", code, stderr)
	} else {
		t.Logf("up: %s", firstLine(stderr, "is ready in"))
	}
	if code := httpStatus(t, "GET", "http://127.0.0.1:"+strconv.Itoa(port)+"/items", ""); code != 200 {
		t.Errorf("GET /items from the arm64 guest = %d", code)
	}
}
