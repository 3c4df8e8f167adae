package instance_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/qmp"
	"github.com/emu-dev/emu/internal/store"
)

// guestRun runs a shell command in the instance's guest and returns its
// output.
func guestRun(t *testing.T, inst store.Instance, script string) string {
	t.Helper()
	var out, errb strings.Builder
	code, err := machine.Exec(context.Background(), inst.Agent(), machine.ExecOptions{
		Argv: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &errb,
	})
	if err != nil || code != 0 {
		t.Fatalf("exec %q in the guest = %d, %v; stderr %q", script, code, err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// TestVMSuspendResume: down suspends, up resumes the same running guest
// (its boot ID proves it was not booted again) with its clock stepped;
// a fresh instance of the image starts from the ready snapshot the first
// up saved; a state that does not fit, a truncated one and a save killed
// halfway each boot cold, say why, and keep the data.
func TestVMSuspendResume(t *testing.T) {
	home := store.At(t.TempDir())
	dir := tinyBundle(t, home)
	man, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	inst := home.Instance(man.Name)
	ctx := context.Background()
	t.Cleanup(func() {
		if pid, err := instance.RunningPID(inst); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	up := func() (instance.Info, []event.Event) {
		t.Helper()
		rec := &event.Recorder{}
		info, err := instance.Up(ctx, instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: dir, Manifest: man, Accel: tcg, Sink: rec})
		if err != nil {
			t.Fatalf("Up: %v", err)
		}
		t.Logf("up: %s in %s (restore %s, snapshot %s)", info.Start, info.Timings.Ready.Round(time.Millisecond),
			info.Timings.Restore.Round(time.Millisecond), info.Timings.Snapshot.Round(time.Millisecond))
		return info, rec.Events()
	}
	suspend := func() machine.StateMeta {
		t.Helper()
		meta, err := instance.Suspend(ctx, inst, nil, nil)
		if err != nil {
			t.Fatalf("Suspend: %v", err)
		}
		if _, err := instance.RunningPID(inst); !errors.Is(err, instance.ErrNotRunning) {
			t.Fatalf("RunningPID after Suspend = %v", err)
		}
		if st, _ := os.Stat(inst.SavedState()); st == nil || st.Mode().Perm() != 0o600 {
			t.Errorf("saved state %v, want mode 0600", st)
		}
		t.Logf("suspend: state %d bytes (%d of RAM) in %s", meta.Size, meta.RAM, meta.SaveTime.Round(time.Millisecond))
		return meta
	}
	said := func(evs []event.Event, sub string) bool {
		for _, e := range evs {
			if e.Kind == event.Log && strings.Contains(e.Msg, sub) {
				return true
			}
		}
		return false
	}

	info, _ := up()
	if info.Start != instance.StartCold || !info.Resumable {
		t.Fatalf("first up: start %q, resumable %v", info.Start, info.Resumable)
	}
	if _, err := os.Stat(filepath.Join(instance.TemplateDir(home.DiskCache(), info.DiskSHA256), "state.zst")); err != nil {
		t.Errorf("the first up of the image saved no ready snapshot: %v", err)
	}
	boot := guestRun(t, inst, "cat /proc/sys/kernel/random/boot_id")
	guestRun(t, inst, "echo item > /root/item && sync")

	suspend()
	// Suspended for a while: the guest's clock must be stepped on resume.
	time.Sleep(5 * time.Second)
	info, _ = up()
	if info.Start != instance.StartResumed {
		t.Errorf("up after a suspend: start %q, want resumed", info.Start)
	}
	if got := guestRun(t, inst, "cat /proc/sys/kernel/random/boot_id"); got != boot {
		t.Errorf("boot ID %s after resume, %s before: the guest was booted, not resumed", got, boot)
	}
	if _, ok := instance.Suspended(inst); ok {
		t.Errorf("the saved state is still there after a resume")
	}
	// busybox's date has whole seconds: the guest's must fall within a
	// second of the host's around the call (it was 5 s behind).
	before := time.Now()
	clock, err := strconv.ParseInt(guestRun(t, inst, "date +%s"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if lo, hi := before.Unix()-1, time.Now().Unix()+1; clock < lo || clock > hi {
		t.Errorf("guest clock %d after a resume, host's %d..%d", clock, before.Unix(), hi-1)
	}
	if got := guestRun(t, inst, "cat /root/item"); got != "item" {
		t.Errorf("item after resume = %q", got)
	}

	// A state saved under another QEMU: cold boot, one line why, data kept.
	suspend()
	var meta machine.StateMeta
	b, _ := os.ReadFile(inst.SavedMeta())
	json.Unmarshal(b, &meta)
	meta.Key.Version = "QEMU emulator version 0.1"
	machine.WriteStateMeta(inst.SavedMeta(), meta)
	info, evs := up()
	if info.Start != instance.StartCold || !said(evs, "qemu changed since the state was saved") {
		t.Errorf("up with a mismatched state: start %q, events %v", info.Start, evs)
	}
	if got := guestRun(t, inst, "cat /root/item"); got != "item" {
		t.Errorf("item after a cold boot = %q", got)
	}
	if _, err := os.Stat(inst.SavedState()); err == nil {
		t.Errorf("a cold boot left the saved state")
	}

	// A truncated state: the restore fails, the guest never ran, cold boot.
	suspend()
	st, _ := os.Stat(inst.SavedState())
	os.Truncate(inst.SavedState(), st.Size()/2)
	info, evs = up()
	if info.Start != instance.StartCold || !said(evs, "could not resume") {
		t.Errorf("up with a truncated state: start %q, events %v", info.Start, evs)
	}
	if got := guestRun(t, inst, "cat /root/item"); got != "item" {
		t.Errorf("item after a failed restore = %q", got)
	}

	// QEMU killed as the save begins: no state, the next up says why.
	pid, _ := instance.RunningPID(inst)
	_, err = instance.Suspend(ctx, inst, nil, event.SinkFunc(func(e event.Event) {
		if strings.Contains(e.Msg, "saving") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}))
	if err == nil {
		t.Fatalf("Suspend with qemu killed succeeded")
	}
	if _, ok := instance.Suspended(inst); ok {
		t.Errorf("a killed save left a state")
	}
	info, evs = up()
	if info.Start != instance.StartCold || !said(evs, "the last suspend did not finish") {
		t.Errorf("up after a killed save: start %q, events %v", info.Start, evs)
	}
	if got := guestRun(t, inst, "cat /root/item"); got != "item" {
		t.Errorf("item after a killed save = %q", got)
	}

	// Reset: a fresh instance starts from the image's ready snapshot,
	// whose boot ID is the first boot's.
	if err := instance.Stop(ctx, inst, nil, nil); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(inst.Dir)
	info, _ = up()
	if info.Start != instance.StartTemplate {
		t.Errorf("up after reset: start %q, want template", info.Start)
	}
	// The kernel did not boot: the console has no boot messages.
	if b, _ := os.ReadFile(inst.Serial()); strings.Contains(string(b), "Linux version") {
		t.Errorf("the guest booted instead of starting from the ready snapshot:\n%s", b)
	}
	// Its random generator was reseeded: a new boot ID (made at its first
	// read, which the snapshot predates), unlike the first instance's.
	if got := guestRun(t, inst, "cat /proc/sys/kernel/random/boot_id"); got == boot {
		t.Errorf("boot ID %s from the template is the first instance's: the random generator was not reseeded", got)
	}
	if out := guestRun(t, inst, "cat /root/item 2>/dev/null || echo none"); out != "none" {
		t.Errorf("a fresh instance has the old instance's data: %q", out)
	}

	// emu killed after a save finished: the guest is left paused, its
	// disks let go of. The next up runs it again, and a suspend works.
	c, err := qmp.Dial(ctx, inst.QMP())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := machine.SaveState(ctx, c, filepath.Join(t.TempDir(), "state.zst")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if was, err := instance.Unpause(ctx, inst); !was || err != nil {
		t.Errorf("Unpause of a guest left paused = %v, %v", was, err)
	}
	guestRun(t, inst, "echo again > /root/again && sync")
	suspend()
	info, _ = up()
	if info.Start != instance.StartResumed || guestRun(t, inst, "cat /root/again") != "again" {
		t.Errorf("after an interrupted suspend: start %q", info.Start)
	}
	if err := instance.Stop(ctx, inst, nil, nil); err != nil {
		t.Fatal(err)
	}
}
