package instance_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/store"
)

// TestVMHostDiskFull: the filesystem holding an instance's overlay fills
// up under a guest's write. QEMU pauses the guest (werror=enospc) instead
// of failing the write, emu says why, and once there is room again the
// write goes through: nothing written before or during is lost.
func TestVMHostDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	buildHome := store.At(t.TempDir())
	dir := tinyBundle(t, buildHome)
	man, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Skipf("mount a small tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", small).Run() })
	inst := store.At(small).Instance(man.Name)
	ctx := context.Background()
	if _, err := instance.Up(ctx, instance.UpOptions{Instance: inst, DiskCache: buildHome.DiskCache(), Bundle: dir, Manifest: man, Accel: tcg, NoTemplate: true}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() { instance.Stop(context.Background(), inst, nil, nil) })
	guestRun(t, inst, "echo before > /root/before && sync")

	// 80 MB do not fit in what is left of 48 MB.
	type result struct {
		code int
		out  string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ectx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		var out strings.Builder
		code, err := machine.Exec(ectx, inst.Agent(), machine.ExecOptions{
			Argv:   []string{"/bin/sh", "-c", "dd if=/dev/urandom of=/root/big bs=1M count=80 2>/dev/null && sync && wc -c < /root/big"},
			Stdout: &out, Stderr: &out,
		})
		done <- result{code, strings.TrimSpace(out.String()), err}
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := instance.QEMUStatus(ctx, inst.QMP())
		if err == nil && st == "io-error" {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("the write finished on a full filesystem: %+v", r)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu status %q (%v) 2 min into the write, want io-error", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if why := instance.DiskFull(inst); !strings.Contains(why, "no space on the filesystem of "+inst.Dir) || !strings.Contains(why, "emu up") {
		t.Errorf("DiskFull = %q", why)
	}
	// Room again: the paused writes go through.
	if out, err := exec.Command("mount", "-o", "remount,size=512m", small).CombinedOutput(); err != nil {
		t.Fatalf("grow the tmpfs: %v: %s", err, out)
	}
	if was, err := instance.Unpause(ctx, inst); !was || err != nil {
		t.Fatalf("Unpause = %v, %v", was, err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.code != 0 || r.out != "83886080" {
			t.Errorf("the write after room was made: %+v, want 83886080 bytes", r)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the write did not finish after room was made")
	}
	if got := guestRun(t, inst, "cat /root/before"); got != "before" {
		t.Errorf("data written before: %q", got)
	}
}
