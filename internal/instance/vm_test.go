package instance_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
)

var tcg = accel.Choice{Accel: qemu.TCG, TimeoutScale: accel.TCGTimeoutScale}

// tinyBundle builds a bundle of the tiny guest (no services: the agent is
// ready as soon as it is up).
func tinyBundle(t *testing.T, home store.Home) string {
	t.Helper()
	return tinyBundleNamed(t, home, "tinyrun")
}

// tinyBundleNamed builds the tiny guest as the stack name.
func tinyBundleNamed(t *testing.T, home store.Home, name string) string {
	t.Helper()
	vmtest.Skip(t)
	dir := t.TempDir()
	res, err := buildTiny(t, home, dir, "name: "+name+"\nbase: {suite: trixie}\nvm: {cpus: 1, memory: 256MiB, disk: 1GiB}\n"+
		"bake:\n  - name: mark\n    run: [/bin/sh, -c, \"echo baked > /root/marker\"]\n", vmtest.Agent(t), vmtest.BaseTarball(t, dir), nil)
	if err != nil {
		t.Fatalf("build tiny bundle: %v", err)
	}
	return res.Dir
}

// buildTiny builds the stack file text (written into dir as emu.yaml, so
// its files may lie beside it) on a tiny guest's base tarball, with agent,
// under TCG.
func buildTiny(t testing.TB, home store.Home, dir, stack, agent, base string, sink event.Sink) (*build.Result, error) {
	t.Helper()
	path := filepath.Join(dir, "emu.yaml")
	if err := os.WriteFile(path, []byte(stack), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := spec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return build.Build(context.Background(), build.Options{
		Stack: s, Home: home, OutDir: filepath.Join(dir, "out"), AgentBinary: agent,
		Accel: tcg, BaseTarball: base, Sink: sink,
	})
}

func TestVMInstanceLifecycle(t *testing.T) {
	home := store.At(t.TempDir())
	if err := home.Claim(); err != nil {
		t.Fatal(err)
	}
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
	up := func() instance.Info {
		t.Helper()
		release, err := instance.Lock(inst)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if _, err := instance.Lock(inst); err == nil || !contains(err.Error(), "busy") {
			t.Errorf("second Lock = %v, want busy", err)
		}
		rec := &event.Recorder{}
		info, err := instance.Up(ctx, instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: dir, Manifest: man, Accel: tcg, Sink: rec})
		if err != nil {
			t.Fatalf("Up: %v", err)
		}
		if st := event.FoldAll(rec.Events()); !st.Ready || !st.Done {
			t.Errorf("Up events: ready=%v done=%v", st.Ready, st.Done)
		}
		return info
	}

	info := up()
	// After a build and an up: everything emu keeps is this user's alone.
	assertPrivate(t, home)
	pid, err := instance.RunningPID(inst)
	if err != nil || pid != info.PID {
		t.Fatalf("RunningPID = %d, %v; want %d", pid, err, info.PID)
	}
	st, err := machine.AgentStatus(ctx, inst.Agent(), 20*time.Second)
	if err != nil || st.Hello == nil || !st.Ready {
		t.Errorf("AgentStatus: hello=%v ready=%v err=%v", st.Hello != nil, st.Ready, err)
	}
	if s, err := instance.QEMUStatus(ctx, inst.QMP()); err != nil || s != "running" {
		t.Errorf("QEMUStatus = %q, %v", s, err)
	}
	// emu exec: a command in the guest, its stdin, output and exit code,
	// through the agent's channel (no sshd in the image).
	var out, errb strings.Builder
	code, err := machine.Exec(ctx, inst.Agent(), machine.ExecOptions{
		Argv:  []string{"/bin/sh", "-c", `cat /root/marker; read x; echo "stdin:$x" >&2; exit 5`},
		Stdin: strings.NewReader("from the host\n"), Stdout: &out, Stderr: &errb,
	})
	if err != nil || code != 5 || out.String() != "baked\n" || errb.String() != "stdin:from the host\n" {
		t.Errorf("Exec in the guest = %d, %v; stdout %q, stderr %q", code, err, out.String(), errb.String())
	}
	var said []string
	if err := instance.Stop(ctx, inst, nil, event.SinkFunc(func(e event.Event) { said = append(said, e.Msg) })); err != nil {
		t.Fatalf("Stop: %v (%v)", err, said)
	}
	if len(said) != 2 || said[1] != "guest powered off" {
		t.Errorf("Stop took other ways than the agent: %q", said)
	}
	if _, err := instance.RunningPID(inst); !errors.Is(err, instance.ErrNotRunning) {
		t.Errorf("RunningPID after Stop = %v", err)
	}
	for _, p := range []string{inst.PID(), inst.Agent(), inst.QMP()} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after Stop", filepath.Base(p))
		}
	}
	if _, err := os.Stat(inst.Overlay()); err != nil {
		t.Errorf("overlay gone after Stop: %v", err)
	}

	// kill -9: the pid file goes stale; it is noticed and cleared.
	info = up()
	syscall.Kill(info.PID, syscall.SIGKILL)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := instance.RunningPID(inst)
		if errors.Is(err, instance.ErrNotRunning) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("RunningPID still sees a killed qemu: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(inst.PID()); err == nil {
		t.Errorf("stale pid file kept")
	}
	info = up()
	if err := instance.Stop(ctx, inst, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestVMInstanceRefusesChangedImage(t *testing.T) {
	home := store.At(t.TempDir())
	dir := tinyBundle(t, home)
	man, _ := bundle.Read(dir)
	inst := home.Instance(man.Name)
	os.MkdirAll(inst.Dir, 0o755)
	os.WriteFile(inst.Overlay(), []byte("x"), 0o644)
	os.WriteFile(inst.State(), []byte(`{"name":"tinyrun","disk_sha256":"other"}`), 0o644)
	_, err := instance.Up(context.Background(), instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: dir, Manifest: man, Accel: tcg})
	if err == nil || !contains(err.Error(), "emu reset") {
		t.Fatalf("Up on a changed image = %v, want a refusal that says emu reset", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestVMUpInterrupted(t *testing.T) {
	home := store.At(t.TempDir())
	dir := tinyBundle(t, home)
	man, _ := bundle.Read(dir)
	inst := home.Instance(man.Name)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t.Cleanup(func() {
		if pid, err := instance.RunningPID(inst); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Ctrl-C while waiting for the guest: it is stopped, nothing is left.
	// The tiny guest has no services, so ready follows hello at once: the
	// interrupt must win over a ready already queued.
	sink := event.SinkFunc(func(e event.Event) {
		if e.Kind == event.Hello {
			cancel()
		}
	})
	_, err := instance.Up(ctx, instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: dir, Manifest: man, Accel: tcg, Sink: sink})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Up = %v, want context.Canceled", err)
	}
	if _, err := instance.RunningPID(inst); !errors.Is(err, instance.ErrNotRunning) {
		t.Errorf("RunningPID after an interrupted up = %v", err)
	}
	if _, err := os.Stat(inst.Overlay()); err != nil {
		t.Errorf("overlay (the data) gone after an interrupted up: %v", err)
	}
}

func TestVMUpKernelCrash(t *testing.T) {
	home := store.At(t.TempDir())
	dir := tinyBundle(t, home)
	man, _ := bundle.Read(dir)
	inst := home.Instance(man.Name)
	// No init in the initramfs: the kernel falls back to mounting root
	// itself, has no virtio driver built in, and panics.
	man.Cmdline += " rdinit=/nonexistent"
	start := time.Now()
	rec := &event.Recorder{}
	_, err := instance.Up(context.Background(), instance.UpOptions{Instance: inst, DiskCache: home.DiskCache(), Bundle: dir, Manifest: man, Accel: tcg, Sink: rec})
	if err == nil {
		t.Fatal("Up of a guest whose kernel panics succeeded")
	}
	// It crashed before the agent's hello: up boots once more (a TCG
	// guest's rare early crash passes), keeping the first console.
	var again int
	for _, e := range rec.Events() {
		if e.Kind == event.Log && strings.Contains(e.Msg, "booting it again") {
			again++
		}
	}
	if again != 1 {
		t.Errorf("%d boot-again events, want 1: %v", again, rec.Events())
	}
	if b, err := os.ReadFile(inst.Serial() + ".1"); err != nil || !strings.Contains(string(b), "Kernel panic") {
		t.Errorf("the first boot's console (serial.log.1) is not kept: %v", err)
	}
	t.Logf("error after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if want := "the guest kernel crashed: Kernel panic - not syncing: VFS: Unable to mount root fs"; !strings.Contains(err.Error(), want) {
		t.Errorf("Up = %v, want it to say %q", err, want)
	}
	var be *machine.GuestError
	if !errors.As(err, &be) || len(be.Tail) == 0 {
		t.Errorf("Up = %#v, want a GuestError with the console's tail", err)
	}
	if _, err := instance.RunningPID(inst); !errors.Is(err, instance.ErrNotRunning) {
		t.Errorf("RunningPID after a crashed up = %v", err)
	}
}

// assertPrivate fails for anything under home that another user could
// read, write or enter: directories must be 0700 or tighter, files and
// sockets 0600 or tighter (0700 for programs).
func assertPrivate(t *testing.T, home store.Home) {
	t.Helper()
	n := 0
	for _, root := range []string{home.Data, home.Cache, home.State} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if fi.Mode()&fs.ModeSymlink != 0 {
				return nil
			}
			n++
			if fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s is %v: others can reach it", p, fi.Mode())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n < 10 {
		t.Errorf("only %d entries under the home: nothing was checked", n)
	}
}
