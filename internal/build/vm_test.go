package build_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
)

var (
	baseOnce sync.Once
	baseDir  string
	basePath string
)

// tinyBase is the tiny guest's base tarball, made once per test binary.
func tinyBase(t *testing.T) string {
	t.Helper()
	vmtest.Skip(t)
	baseOnce.Do(func() {
		var err error
		if baseDir, err = os.MkdirTemp("", "emu-tiny-"); err != nil {
			t.Fatal(err)
		}
		basePath = vmtest.BaseTarball(t, baseDir)
	})
	if basePath == "" {
		t.Fatal("tiny base tarball was not made")
	}
	return basePath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if baseDir != "" {
		os.RemoveAll(baseDir)
	}
	os.Exit(code)
}

// tinyStack loads a stack file for the tiny guest with the given bake steps.
func tinyStack(t *testing.T, name, bake string) *spec.Stack {
	t.Helper()
	dir := t.TempDir()
	src := "name: " + name + "\nbase: {suite: trixie}\nvm: {cpus: 1, memory: 256MiB, disk: 1GiB}\nbake:\n" + bake
	path := filepath.Join(dir, "emu.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := spec.Load(path)
	if err != nil {
		t.Fatalf("load tiny stack: %v", err)
	}
	return s
}

type env struct {
	opts build.Options
	rec  *event.Recorder
	out  string
}

func newEnv(t *testing.T, s *spec.Stack) *env {
	t.Helper()
	rec := &event.Recorder{}
	out := t.TempDir()
	return &env{
		rec: rec,
		out: out,
		opts: build.Options{
			Stack:       s,
			Home:        store.At(t.TempDir()),
			OutDir:      out,
			AgentBinary: vmtest.Agent(t),
			Accel:       accel.Choice{Accel: qemu.TCG, TimeoutScale: accel.TCGTimeoutScale},
			Sink:        rec,
			BaseTarball: tinyBase(t),
		},
	}
}

// previous places a fake earlier bundle, to prove a failed build keeps it.
func (e *env) previous(t *testing.T) {
	t.Helper()
	dir := filepath.Join(e.out, e.opts.Stack.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.BundleManifest), []byte(`{"name":"previous"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkAftermath asserts what must hold after any failed build.
func (e *env) checkAftermath(t *testing.T, hadPrevious bool) {
	t.Helper()
	if hadPrevious {
		b, err := os.ReadFile(filepath.Join(e.out, e.opts.Stack.Name, store.BundleManifest))
		if err != nil || string(b) != `{"name":"previous"}` {
			t.Errorf("previous bundle changed: %q, %v", b, err)
		}
	}
	ents, _ := os.ReadDir(e.out)
	for _, ent := range ents {
		if ent.Name() != e.opts.Stack.Name {
			t.Errorf("left in the output directory: %s", ent.Name())
		}
	}
	if !e.opts.KeepOnFailure {
		if ents, _ := os.ReadDir(e.opts.Home.Work()); len(ents) > 0 {
			t.Errorf("work directory not removed: %s", ents[0].Name())
		}
	}
	if pids := qemuPids(e.opts.Stack.Name); len(pids) > 0 {
		t.Errorf("qemu processes left: %v", pids)
	}
	terminal := 0
	evs := e.rec.Events()
	for _, ev := range evs {
		if ev.Kind.Terminal() {
			terminal++
		}
	}
	if terminal != 1 || !evs[len(evs)-1].Kind.Terminal() {
		t.Errorf("stream has %d terminal events, last %s; want exactly one, last", terminal, evs[len(evs)-1].Kind)
	}
}

// qemuPids lists running QEMU processes of stack name's build.
func qemuPids(name string) []int {
	var pids []int
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.Contains(args[0], "qemu-system") && bytes.Contains(b, []byte("emu-build-"+name+"\x00")) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(m)))
			pids = append(pids, pid)
		}
	}
	return pids
}

func buildErr(t *testing.T, err error) *build.Error {
	t.Helper()
	var be *build.Error
	if !errors.As(err, &be) {
		t.Fatalf("Build error = %v (%T), want *build.Error", err, err)
	}
	return be
}

func TestVMBuildSucceeds(t *testing.T) {
	const secret = "s3cret-6c1f0e9a-never-in-the-image"
	s := tinyStack(t, "tiny-ok", `
  - name: hello
    run: [/bin/sh, -c, "echo first line; echo second line >&2; mkdir -p /var/lib/tiny; echo baked > /var/lib/tiny/marker"]
  - name: secret
    run: [/bin/sh, -c, "test -n \"$TOKEN\" && echo token has ${#TOKEN} characters"]
    env: {TOKEN: "`+secret+`"}
`)
	e := newEnv(t, s)
	e.previous(t)
	res, err := build.Build(context.Background(), e.opts)
	if err != nil {
		t.Fatalf("Build: %v\n%s", err, detail(err))
	}
	for _, f := range []string{store.BundleDisk, store.BundleKernel, store.BundleInitrd, store.BundleManifest, store.BundleLog} {
		if _, err := os.Stat(filepath.Join(res.Dir, f)); err != nil {
			t.Errorf("bundle lacks %s: %v", f, err)
		}
	}
	var names []string
	for _, st := range res.Manifest.Stages {
		names = append(names, st.Name)
	}
	if got, want := strings.Join(names, ","), strings.Join(build.Stages[:len(build.Stages)-1], ","); !strings.HasPrefix(got, want) {
		t.Errorf("manifest stages = %s, want %s", got, want)
	}
	st := event.FoldAll(e.rec.Events())
	if !st.Done || st.Failed {
		t.Errorf("status done=%v failed=%v", st.Done, st.Failed)
	}
	var out []string
	for _, it := range st.Steps {
		out = append(out, it.Tail...)
	}
	if joined := strings.Join(out, "\n"); !strings.Contains(joined, "first line") || !strings.Contains(joined, "second line") || !strings.Contains(joined, "token has 34 characters") {
		t.Errorf("step output = %q", joined)
	}
	// The bake's secret must be nowhere in the bundle, the disk included.
	raw, err := disk.Unpack(context.Background(), filepath.Join(res.Dir, store.BundleDisk), filepath.Join(t.TempDir(), "unpacked"))
	if err != nil {
		t.Fatal(err)
	}
	// The build handed the same disk to the disk cache: the first boot
	// needs no unpacking, and it is byte for byte what the bundle holds.
	cached := filepath.Join(e.opts.Home.DiskCache(), res.Manifest.Files[store.BundleDisk].SHA256, disk.PackedName)
	if out, err := exec.Command("cmp", raw, cached).CombinedOutput(); err != nil {
		t.Errorf("cached disk differs from the bundle's: %v: %s", err, out)
	}
	for _, f := range []string{raw, filepath.Join(res.Dir, store.BundleLog), filepath.Join(res.Dir, store.BundleManifest), filepath.Join(res.Dir, store.BundleInitrd)} {
		if containsFile(t, f, secret) {
			t.Errorf("the bake step's secret is in %s", filepath.Base(f))
		}
	}
	if !containsFile(t, raw, "baked\n") {
		t.Errorf("the bake's output file is not in the image")
	}
	if pids := qemuPids(s.Name); len(pids) > 0 {
		t.Errorf("qemu processes left: %v", pids)
	}
}

func containsFile(t *testing.T, path, s string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	carry := []byte{}
	for {
		n, err := f.Read(buf)
		chunk := append(carry, buf[:n]...)
		if bytes.Contains(chunk, []byte(s)) {
			return true
		}
		if len(chunk) > len(s) {
			carry = append([]byte(nil), chunk[len(chunk)-len(s):]...)
		}
		if err != nil {
			return false
		}
	}
}

func detail(err error) string {
	var be *build.Error
	if errors.As(err, &be) {
		return be.Detail()
	}
	return ""
}

func TestVMStepFails(t *testing.T) {
	s := tinyStack(t, "tiny-fail", `
  - name: ok
    run: [/bin/true]
  - name: boom
    run: [/bin/sh, -c, "for i in $(seq 1 80); do echo line $i; done; echo about to fail >&2; exit 3"]
    timeout: 10m
  - name: never
    run: [/bin/sh, -c, "echo must not run"]
`)
	e := newEnv(t, s)
	e.previous(t)
	start := time.Now()
	_, err := build.Build(context.Background(), e.opts)
	took := time.Since(start)
	be := buildErr(t, err)
	if be.Step != "boom" || be.Code == nil || *be.Code != 3 {
		t.Errorf("error step=%q code=%v, want boom and 3: %v", be.Step, be.Code, err)
	}
	if len(be.Tail) != event.TailLines || be.Tail[len(be.Tail)-1] != "about to fail" {
		t.Errorf("tail has %d lines, last %q; want %d ending with the failure", len(be.Tail), be.Tail[len(be.Tail)-1], event.TailLines)
	}
	if len(be.Logs) == 0 {
		t.Errorf("no log paths in the error")
	}
	for _, l := range be.Logs {
		if _, err := os.Stat(l); err != nil {
			t.Errorf("log %s: %v", l, err)
		}
	}
	// Generous: the step's own timeout is 10m; failing fast means far less.
	if took > 4*time.Minute {
		t.Errorf("build took %s to report the failure", took)
	}
	for _, ev := range e.rec.Events() {
		if ev.Name == "never" {
			t.Errorf("a step after the failure ran: %v", ev)
		}
	}
	e.checkAftermath(t, true)
}

func TestVMStepTimeout(t *testing.T) {
	s := tinyStack(t, "tiny-timeout", `
  - name: hang
    run: [/bin/sh, -c, "echo hanging; sleep 600"]
    timeout: 3s
`)
	e := newEnv(t, s)
	_, err := build.Build(context.Background(), e.opts)
	be := buildErr(t, err)
	if be.Step != "hang" || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("error = %v, want step hang timed out", err)
	}
	e.checkAftermath(t, false)
}

func TestVMKernelPanic(t *testing.T) {
	s := tinyStack(t, "tiny-panic", `
  - name: panic
    run: [/bin/sh, -c, "echo c > /proc/sysrq-trigger; sleep 60"]
`)
	e := newEnv(t, s)
	e.previous(t)
	_, err := build.Build(context.Background(), e.opts)
	be := buildErr(t, err)
	if !strings.Contains(err.Error(), "qemu exited") {
		t.Errorf("error = %v, want qemu exited", err)
	}
	if be.Step != "panic" {
		t.Errorf("error names step %q, want panic", be.Step)
	}
	if tail := strings.Join(be.Tail, "\n"); !strings.Contains(tail, "Kernel panic") && !strings.Contains(tail, "sysrq") {
		t.Errorf("console tail does not show the panic:\n%s", tail)
	}
	e.checkAftermath(t, true)
}

func TestVMQEMUKilled(t *testing.T) {
	s := tinyStack(t, "tiny-killed", `
  - name: wait
    run: [/bin/sh, -c, "echo waiting; sleep 600"]
    timeout: 10m
`)
	e := newEnv(t, s)
	e.opts.Sink = event.Tee(e.rec, event.SinkFunc(func(ev event.Event) {
		if ev.Kind == event.StepStart {
			for _, pid := range qemuPids(s.Name) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}))
	_, err := build.Build(context.Background(), e.opts)
	be := buildErr(t, err)
	if !strings.Contains(err.Error(), "qemu exited") || be.Step != "wait" {
		t.Errorf("error = %v (step %q), want qemu exited during wait", err, be.Step)
	}
	e.checkAftermath(t, false)
}

func TestVMInterrupt(t *testing.T) {
	s := tinyStack(t, "tiny-int", `
  - name: wait
    run: [/bin/sh, -c, "sleep 600"]
    timeout: 10m
`)
	e := newEnv(t, s)
	e.previous(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.opts.Sink = event.Tee(e.rec, event.SinkFunc(func(ev event.Event) {
		if ev.Kind == event.StepStart {
			cancel()
		}
	}))
	_, err := build.Build(ctx, e.opts)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
	e.checkAftermath(t, true)
}

func TestVMKeepOnFailure(t *testing.T) {
	s := tinyStack(t, "tiny-keep", `
  - name: boom
    run: [/bin/false]
`)
	e := newEnv(t, s)
	e.opts.KeepOnFailure = true
	_, err := build.Build(context.Background(), e.opts)
	be := buildErr(t, err)
	if be.Kept == "" {
		t.Fatalf("error keeps nothing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(be.Kept, store.WorkDisk)); err != nil {
		t.Errorf("kept work directory lacks the disk: %v", err)
	}
	if !strings.Contains(be.Detail(), be.Kept) {
		t.Errorf("detail does not say where: %s", be.Detail())
	}
	e.checkAftermath(t, false)
}
