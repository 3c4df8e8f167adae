package e2e

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/oci/regtest"
	"github.com/emu-dev/emu/internal/store"
)

// registry pushes the demo bundle built by TestDemoBuildAndVerify to a
// local registry (Debian's docker-registry) and runs it the way a
// developer who never built it does: a fresh EMU_HOME, `emu up REF`, which
// pulls the image, then starts it; the API answers with the rows the build
// seeded.
func registry(ctx context.Context, t *testing.T, bundleDir string) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	ref := reg.Addr + "/emu/demo:e2e"
	start := time.Now()
	if _, stderr, code := run(ctx, "push", ref, bundleDir); code != 0 {
		t.Fatalf("emu push exited %d:\n%s", code, stderr)
	}
	t.Logf("push: %s", time.Since(start))

	// A developer's machine: nothing built, nothing pulled.
	home := t.TempDir()
	t.Setenv("EMU_HOME", home)
	mark := store.At(home).Instance("demo").Dir
	t.Cleanup(func() {
		run(context.Background(), "down", "demo", "--poweroff")
		for _, pid := range qemuPids(mark) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	port := freePort(t)
	start = time.Now()
	_, stderr, code := run(ctx, "up", ref, "--port=api.http="+strconv.Itoa(port),
		"--port=postgres.sql="+strconv.Itoa(freePort(t)), "--port=valkey.resp="+strconv.Itoa(freePort(t)))
	if code != 0 {
		t.Fatalf("emu up %s exited %d:\n%s", ref, code, stderr)
	}
	t.Logf("up from the registry (pull, unpack, boot): %s", time.Since(start))
	if !strings.Contains(stderr, "pulling "+ref+": not in the image store yet") || !strings.Contains(stderr, "pulled "+ref) {
		t.Errorf("up did not say it pulled:\n%s", stderr)
	}
	body := httpBody(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/items")
	for _, seeded := range []string{"apple", "banana", "cherry"} {
		if !strings.Contains(body, seeded) {
			t.Errorf("GET /items lacks the seeded %q: %s", seeded, body)
		}
	}
	// The image is listed with where it came from, and cannot be removed
	// while the instance runs on it.
	if stdout, _, _ := run(ctx, "images"); !strings.Contains(stdout, ref) {
		t.Errorf("emu images does not show the origin:\n%s", stdout)
	}
	if _, stderr, code := run(ctx, "rmi", "demo"); code == 0 || !strings.Contains(stderr, "in use by instance demo") {
		t.Errorf("rmi of the running image: exit %d:\n%s", code, stderr)
	}
}
