package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
)

// TestSIGINTDuringUp sends a real SIGINT to the emu process while `emu up`
// waits for the guest: it exits 130, the guest is stopped, nothing is left
// running, and the instance's data stays.
func TestSIGINTDuringUp(t *testing.T) {
	vmtest.Skip(t)
	root, _ := filepath.Abs("..")
	bin := t.TempDir()
	for pkg, out := range map[string]string{"./cmd/emu": "emu", "./cmd/emu-agent": "emu-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, out), pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v: %s", pkg, err, b)
		}
	}
	home := t.TempDir()
	dir := t.TempDir()
	path := filepath.Join(dir, "emu.yaml")
	os.WriteFile(path, []byte("name: tinysig\nbase: {suite: trixie}\nvm: {cpus: 1, memory: 256MiB, disk: 1GiB}\n"), 0o644)
	s, err := spec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := build.Build(context.Background(), build.Options{
		Stack: s, Home: store.At(home), OutDir: filepath.Join(dir, "out"), AgentBinary: filepath.Join(bin, "emu-agent"),
		Accel: accel.Choice{Accel: qemu.TCG, TimeoutScale: accel.TCGTimeoutScale}, BaseTarball: vmtest.BaseTarball(t, dir),
		SkipVerify: true,
	})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	inst := store.At(home).Instance("tinysig")

	cmd := exec.Command(filepath.Join(bin, "emu"), "up", res.Dir, "--json", "--accel", "tcg")
	cmd.Env = append(os.Environ(), "EMU_HOME="+home)
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		for _, pid := range qemuPids(inst.Dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Interrupt as soon as QEMU runs (its pid file is written), while the
	// guest boots: this guest has no services, so its agent's hello is
	// followed at once by ready, and a signal sent on hello could come
	// after up has already succeeded.
	events := make(chan event.Event, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e event.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				select {
				case events <- e:
				default:
				}
			}
		}
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(inst.PID()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no QEMU pid file within 2 minutes:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("emu up did not end after SIGINT:\n%s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Errorf("exit code %d after SIGINT, want 130:\n%s", code, stderr.String())
	}
	if pids := qemuPids(inst.Dir); len(pids) > 0 {
		t.Errorf("qemu left running after SIGINT: %v", pids)
	}
	if _, err := os.Stat(inst.PID()); err == nil {
		t.Errorf("pid file left after SIGINT")
	}
	if _, err := os.Stat(inst.Overlay()); err != nil {
		t.Errorf("the instance's data (overlay) is gone: %v", err)
	}
}
