package instance_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
)

// arm64Build builds the tiny guest for arm64 (Debian's arm64 cloud kernel
// and busybox, the arm64 agent) with bake, on -machine virt under TCG.
func arm64Build(t *testing.T, home store.Home, name, bake string) (*build.Result, *event.Recorder, error) {
	t.Helper()
	vmtest.SkipArch(t, "arm64")
	dir := t.TempDir()
	rec := &event.Recorder{}
	res, err := buildTiny(t, home, dir, "name: "+name+"\nbase: {suite: trixie, arch: arm64}\nvm: {cpus: 1, memory: 256MiB, disk: 1GiB}\nbake:\n"+bake,
		vmtest.AgentFor(t, "arm64"), vmtest.BaseTarballFor(t, dir, "arm64"), rec)
	return res, rec, err
}

// TestVMArm64 runs an arm64 guest under TCG through what an amd64 one
// goes through: a build whose bake step's output and exit come back as
// events, a build whose step fails, and an instance's up, exec, status
// and down.
func TestVMArm64(t *testing.T) {
	home := store.At(t.TempDir())
	res, rec, err := arm64Build(t, home, "tinyarm", `  - name: mark
    run: [/bin/sh, -c, "uname -m; echo baked > /root/marker"]
`)
	if err != nil {
		t.Fatalf("arm64 build: %v", err)
	}
	st := event.FoldAll(rec.Events())
	if len(st.Steps) != 1 || st.Steps[0].State != event.Succeeded || strings.Join(st.Steps[0].Tail, "\n") != "aarch64" {
		t.Errorf("the bake step's events: %+v", st.Steps)
	}
	if res.Manifest.Arch != "arm64" || !strings.Contains(res.Manifest.Cmdline, "console=ttyAMA0") {
		t.Errorf("manifest: arch %q, cmdline %q", res.Manifest.Arch, res.Manifest.Cmdline)
	}

	_, _, err = arm64Build(t, home, "tinyarmfail", `  - name: boom
    run: [/bin/sh, -c, "echo about to fail >&2; exit 3"]
`)
	var be *build.Error
	if !errors.As(err, &be) || be.Step() != "boom" || be.Guest() == nil || be.Guest().Code == nil || *be.Guest().Code != 3 {
		t.Errorf("a failing arm64 step: %v, want step boom with exit 3", err)
	}

	man, err := bundle.Read(res.Dir)
	if err != nil {
		t.Fatal(err)
	}
	inst := home.Instance(man.Name)
	ctx := context.Background()
	info, err := instance.Up(ctx, instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: res.Dir,
		Manifest: man, Accel: tcg, NoTemplate: true})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() { instance.Stop(ctx, inst, nil, nil) })
	var out strings.Builder
	code, err := machine.Exec(ctx, inst.Agent(), machine.ExecOptions{
		Argv: []string{"/bin/sh", "-c", "uname -m; cat /root/marker"}, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 || out.String() != "aarch64\nbaked\n" {
		t.Errorf("exec in the arm64 guest: %d, %v: %q", code, err, out.String())
	}
	if s, err := instance.QEMUStatus(ctx, inst.QMP()); err != nil || s != "running" {
		t.Errorf("QEMUStatus = %q, %v", s, err)
	}
	if pid, err := instance.RunningPID(inst); err != nil || pid != info.PID {
		t.Errorf("RunningPID = %d, %v; want %d", pid, err, info.PID)
	}
	// emu down suspends an arm64 guest too, and up resumes it.
	boot := guestRun(t, inst, "cat /proc/sys/kernel/random/boot_id")
	if _, err := instance.Suspend(ctx, inst, nil, nil); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	info, err = instance.Up(ctx, instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: res.Dir,
		Manifest: man, Accel: tcg, NoTemplate: true})
	if err != nil || info.Start != instance.StartResumed {
		t.Fatalf("Up after Suspend: %v, start %q; want resumed", err, info.Start)
	}
	if got := guestRun(t, inst, "cat /proc/sys/kernel/random/boot_id"); got != boot {
		t.Errorf("boot ID %s after resume, %s before", got, boot)
	}
	if err := instance.Stop(ctx, inst, nil, nil); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := instance.RunningPID(inst); !errors.Is(err, instance.ErrNotRunning) {
		t.Errorf("RunningPID after Stop = %v", err)
	}
}
