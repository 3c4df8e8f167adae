package build_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/binopt"
	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/proto"
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
func tinyBase(t testing.TB) string {
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
func tinyStack(t testing.TB, name, bake string) *spec.Stack {
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

func newEnv(t testing.TB, s *spec.Stack) *env {
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

// guestErr is the guest failure behind a build error.
func guestErr(t *testing.T, be *build.Error) *machine.GuestError {
	t.Helper()
	ge := be.Guest()
	if ge == nil {
		t.Fatalf("Build error = %v, want a guest failure in it", be)
	}
	return ge
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
	if got, want := strings.Join(names, ","), strings.Join(build.StagesFor(s)[:len(build.StagesFor(s))-1], ","); !strings.HasPrefix(got, want) {
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
	ge := guestErr(t, be)
	if be.Step() != "boom" || ge.Code == nil || *ge.Code != 3 {
		t.Errorf("error step=%q code=%v, want boom and 3: %v", be.Step(), ge.Code, err)
	}
	if len(ge.Tail) != event.TailLines || ge.Tail[len(ge.Tail)-1] != "about to fail" {
		t.Errorf("tail has %d lines, last %q; want %d ending with the failure", len(ge.Tail), ge.Tail[len(ge.Tail)-1], event.TailLines)
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
	if be.Step() != "hang" || !strings.Contains(err.Error(), "timed out") {
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
	ge := guestErr(t, be)
	if !strings.Contains(err.Error(), "qemu exited") {
		t.Errorf("error = %v, want qemu exited", err)
	}
	if be.Step() != "panic" {
		t.Errorf("error names step %q, want panic", be.Step())
	}
	t.Logf("error: %v", err)
	// The panic line may have scrolled out of the tail behind the stack
	// trace; the error itself names it.
	if want := "the guest kernel crashed: Kernel panic - not syncing: sysrq triggered crash"; !strings.Contains(err.Error(), want) {
		t.Errorf("error = %v, want it to say %q", err, want)
	}
	if len(ge.Tail) == 0 || ge.TailFrom != "the serial console" {
		t.Errorf("tail from %q has %d lines, want the serial console's", ge.TailFrom, len(ge.Tail))
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
	if !strings.Contains(err.Error(), "qemu exited") || be.Step() != "wait" {
		t.Errorf("error = %v (step %q), want qemu exited during wait", err, be.Step())
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

// needTools skips t without the tools (fails in CI, where they belong).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := command.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("VM test needs %s: %v", tool, err)
			}
			t.Skipf("VM test needs %s: %v", tool, err)
		}
	}
}

const optGoProg = `package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "--version" {
		fmt.Println("hello-go 1.0")
		return
	}
	os.Exit(3)
}
`

// optCProg passes "selfcheck N" only while its own file has N bytes or
// more: stripped it does, compressed by UPX it no longer does.
const optCProg = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
	struct stat st;
	if (argc > 2 && strcmp(argv[1], "selfcheck") == 0) {
		if (stat("/proc/self/exe", &st) != 0) return 2;
		if (st.st_size < atol(argv[2])) {
			printf("hello-c too small: %ld bytes\n", (long)st.st_size);
			return 1;
		}
		puts("hello-c intact");
		return 0;
	}
	puts("hello-c 1.0");
	return 0;
}
`

// TestVMOptimize builds with files[].optimize on the tiny guest: a static Go
// binary ends up compressed, a C binary that breaks under UPX stripped, a
// script untouched, each proven in the guest, and no candidate stays.
func TestVMOptimize(t *testing.T) {
	vmtest.Skip(t)
	needTools(t, "gcc", "strip", "debugfs", "go")
	if _, err := binopt.FindUPX(); err != nil {
		needTools(t, "upx")
	}
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goSrc := write("main.go", optGoProg, 0o644)
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "hello-go"), goSrc)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	cSrc := write("hello.c", optCProg, 0o644)
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", filepath.Join(dir, "hello-c"), cSrc).CombinedOutput(); err != nil {
		t.Fatalf("gcc -static: %v: %s", err, out)
	}
	write("hello.sh", "#!/bin/sh\necho hello\n", 0o755)
	fi, err := os.Stat(filepath.Join(dir, "hello-c"))
	if err != nil {
		t.Fatal(err)
	}
	// Stripping a static glibc binary keeps most of it; UPX takes it
	// under half.
	minSize := strconv.FormatInt(fi.Size()/2, 10)
	stack := `name: tiny-opt
base: {suite: trixie}
vm: {cpus: 1, memory: 256MiB, disk: 1GiB}
files:
  - {src: hello-go, dst: /usr/local/bin/hello-go, optimize: {compress: upx, verify: {args: [--version], output: "hello-go 1.0"}}}
  - {src: hello-c, dst: /usr/local/bin/hello-c, optimize: {compress: upx, verify: {args: [selfcheck, "` + minSize + `"], output: intact}}}
  - {src: hello.sh, dst: /usr/local/bin/hello.sh, optimize: true}
bake:
  - name: use
    run: [/usr/local/bin/hello-go, --version]
`
	s, err := spec.Load(write("emu.yaml", stack, 0o644))
	if err != nil {
		t.Fatalf("load stack: %v", err)
	}
	e := newEnv(t, s)
	res, err := build.Build(context.Background(), e.opts)
	if err != nil {
		t.Fatalf("Build: %v\n%s", err, detail(err))
	}
	m, err := bundle.Read(res.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Binaries) != 3 {
		t.Fatalf("manifest has %d binaries, want 3: %+v", len(m.Binaries), m.Binaries)
	}
	checks := func(r binopt.Report) string {
		var out []string
		for _, c := range r.Checks {
			verdict := "ok"
			if !c.OK {
				verdict = c.Reason
			}
			out = append(out, string(c.Candidate)+" "+verdict)
		}
		return strings.Join(out, ", ")
	}
	for _, r := range m.Binaries {
		t.Logf("%s: %s, %d/%d/%d bytes, chosen %s, checks %s; %s", r.Path, r.Kind, r.Original, r.Stripped, r.Compressed, r.Chosen, checks(r), r.Reason)
	}
	goRep, cRep, shRep := m.Binaries[0], m.Binaries[1], m.Binaries[2]
	if goRep.Path != "/usr/local/bin/hello-go" || goRep.Chosen != binopt.Compressed || !goRep.Verified ||
		checks(goRep) != "compressed ok" || !(goRep.Compressed < goRep.Stripped && goRep.Stripped < goRep.Original) {
		t.Errorf("hello-go: chosen %s, verified %v, checks %q, sizes %d/%d/%d; want compressed, verified, compressed ok",
			goRep.Chosen, goRep.Verified, checks(goRep), goRep.Original, goRep.Stripped, goRep.Compressed)
	}
	if cRep.Chosen != binopt.Stripped || !cRep.Verified || checks(cRep) != "compressed exit code 1, want 0, stripped ok" ||
		!strings.Contains(cRep.Reason, "the compressed file fails its verify") {
		t.Errorf("hello-c: chosen %s, verified %v, checks %q, reason %q; want stripped after the compressed one failed",
			cRep.Chosen, cRep.Verified, checks(cRep), cRep.Reason)
	}
	if shRep.Kind != binopt.Script || shRep.Chosen != binopt.Original {
		t.Errorf("hello.sh: kind %s, chosen %s; want a script kept", shRep.Kind, shRep.Chosen)
	}
	var out []string
	for _, it := range event.FoldAll(e.rec.Events()).Steps {
		out = append(out, it.Tail...)
	}
	if !strings.Contains(strings.Join(out, "\n"), "hello-go 1.0") {
		t.Errorf("the bake did not run the installed binary: %q", out)
	}

	// The disk holds the chosen files, and no candidate.
	raw, err := disk.Unpack(context.Background(), filepath.Join(res.Dir, store.BundleDisk), filepath.Join(t.TempDir(), "unpacked"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []binopt.Report{goRep, cRep} {
		got := dumpFile(t, raw, r.Path)
		if int64(len(got)) != r.Size() {
			t.Errorf("%s in the image has %d bytes, want the %s file's %d", r.Path, len(got), r.Chosen, r.Size())
		}
		if packed := bytes.Contains(got, []byte("UPX!")); packed != (r.Chosen == binopt.Compressed) {
			t.Errorf("%s in the image: UPX-packed %v, chosen %s", r.Path, packed, r.Chosen)
		}
	}
	if got := dumpFile(t, raw, "/usr/local/bin/hello.sh"); string(got) != "#!/bin/sh\necho hello\n" {
		t.Errorf("hello.sh in the image: %q", got)
	}
	if out := debugfs(t, raw, "stat /var/lib/emu"); !strings.Contains(out, "not found") {
		t.Errorf("/var/lib/emu is in the image:\n%s", out)
	}
}

// debugfs runs one read-only debugfs request on the raw ext4 image.
func debugfs(t *testing.T, raw, request string) string {
	t.Helper()
	bin, err := command.LookPath("debugfs")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-R", request, raw).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", request, err, out)
	}
	return string(out)
}

// dumpFile reads a file out of the raw ext4 image, without mounting it.
func dumpFile(t *testing.T, raw, path string) []byte {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(path))
	out := debugfs(t, raw, "dump "+path+" "+dst)
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatalf("dump %s from the image: %v\n%s", path, err, out)
	}
	if m := regexp.MustCompile(`Size: (\d+)`).FindStringSubmatch(debugfs(t, raw, "stat "+path)); m == nil || m[1] != strconv.Itoa(len(b)) {
		t.Fatalf("debugfs stat %s disagrees with the dump's %d bytes: %v", path, len(b), m)
	}
	return b
}

func TestVMVerifyFails(t *testing.T) {
	// The bake succeeds but leaves an image whose agent cannot start: the
	// boot check must catch it before the bundle is placed.
	s := tinyStack(t, "tiny-verify", `
  - name: break-image
    run: [/bin/sh, -c, "echo 'exit 3' > /etc/emu-broken; printf '#!/bin/sh\necho broken image\npoweroff -f\n' > /sbin/init"]
`)
	e := newEnv(t, s)
	e.previous(t)
	_, err := build.Build(context.Background(), e.opts)
	be := buildErr(t, err)
	ge := guestErr(t, be)
	if be.Stage != "verify" || !strings.Contains(err.Error(), "qemu exited") {
		t.Errorf("error = %v (stage %q), want the verify stage to report qemu exiting", err, be.Stage)
	}
	if tail := strings.Join(ge.Tail, "\n"); !strings.Contains(tail, "broken image") {
		t.Errorf("console tail does not show the broken boot:\n%s", tail)
	}
	e.checkAftermath(t, true)
}

func TestVMDiskFull(t *testing.T) {
	s := tinyStack(t, "tiny-full", `
  - name: fill
    run: [/bin/sh, -c, "dd if=/dev/zero of=/root/fill bs=1M"]
    timeout: 5m
`)
	e := newEnv(t, s)
	e.previous(t)
	_, err := build.Build(context.Background(), e.opts)
	be := buildErr(t, err)
	ge := guestErr(t, be)
	if be.Step() != "fill" || ge.Code == nil || *ge.Code == 0 {
		t.Errorf("error = %v (step %q), want the fill step failing", err, be.Step())
	}
	if tail := strings.Join(ge.Tail, "\n"); !strings.Contains(tail, "No space left") {
		t.Errorf("tail does not say the disk is full:\n%s", tail)
	}
	e.checkAftermath(t, true)
}

func TestOutputNotWritable(t *testing.T) {
	s := tinyStack(t, "tiny-out", "  - name: x\n    run: [/bin/true]\n")
	file := filepath.Join(t.TempDir(), "a-file")
	os.WriteFile(file, []byte("x"), 0o644)
	home := store.At(t.TempDir())
	_, err := build.Build(context.Background(), build.Options{
		Stack: s, Home: home, OutDir: filepath.Join(file, "out"), AgentBinary: "/nonexistent", Sink: &event.Recorder{},
	})
	be := buildErr(t, err)
	if be.Stage != "prepare" || !strings.Contains(err.Error(), file) {
		t.Errorf("error = %v, want the prepare stage naming %s", err, file)
	}
	if ents, _ := os.ReadDir(home.Work()); len(ents) > 0 {
		t.Errorf("work directory left: %s", ents[0].Name())
	}
}

// A kernel crash before the agent's hello gets one more boot: the tiny
// guest's init crashes once when the tree has /emu-test-crash-once.
func TestVMCrashBeforeHelloBootsAgain(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "marker"), []byte("x"), 0o644)
	src := "name: tiny-crash-once\nbase: {suite: trixie}\nvm: {cpus: 1, memory: 256MiB, disk: 1GiB}\n" +
		"files:\n  - {src: marker, dst: /emu-test-crash-once}\n" +
		"bake:\n  - name: mark\n    run: [/bin/sh, -c, \"echo baked\"]\n"
	path := filepath.Join(dir, "emu.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := spec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, s)
	if _, err := build.Build(context.Background(), e.opts); err != nil {
		t.Fatalf("build after one early crash: %v", err)
	}
	var again int
	for _, ev := range e.rec.Events() {
		if ev.Kind == event.Log && strings.Contains(ev.Msg, "crashed before the agent started (Kernel panic - not syncing: sysrq triggered crash); booting it again") {
			again++
		}
	}
	if again != 1 {
		t.Errorf("%d boot-again events, want 1", again)
	}
	logs, _ := filepath.Glob(filepath.Join(e.opts.Home.BuildLogs(s.Name), "*", store.SerialLog+".1"))
	if len(logs) != 1 {
		t.Fatalf("first boot's console: %v, want one serial.log.1", logs)
	}
	if b, _ := os.ReadFile(logs[0]); !strings.Contains(string(b), "crashing before the agent") {
		t.Errorf("serial.log.1 is not the crashed boot's console")
	}
}

// The boot check (verify) also boots once more after an early crash: here
// the bake leaves the marker, so the image's first boot crashes.
func TestVMVerifyCrashBeforeHelloBootsAgain(t *testing.T) {
	s := tinyStack(t, "tiny-verify-crash", `
  - name: arm
    run: [/bin/sh, -c, "echo x > /emu-test-crash-once"]
`)
	e := newEnv(t, s)
	if _, err := build.Build(context.Background(), e.opts); err != nil {
		t.Fatalf("build whose image crashes on its first boot: %v", err)
	}
	var again int
	for _, ev := range e.rec.Events() {
		if ev.Kind == event.Log && strings.Contains(ev.Msg, "booting it again") {
			again++
		}
	}
	if again != 1 {
		t.Errorf("%d boot-again events, want 1 (from verify)", again)
	}
}

// BenchmarkVMStepAck measures what the step-start acknowledgement costs: a
// bake of 40 empty steps in the tiny guest, each step.done carrying the
// agent's wait for the host's ack. The step's own run (fork and exec of
// /bin/true) is reported beside it as the baseline.
//
//	go test -run '^$' -bench VMStepAck -benchtime 3x ./internal/build/
func BenchmarkVMStepAck(b *testing.B) {
	var bake strings.Builder
	for i := range 40 {
		fmt.Fprintf(&bake, "  - name: s%02d\n    run: [/bin/true]\n", i)
	}
	var acks, runs []time.Duration
	for b.Loop() {
		s := tinyStack(b, "tiny-ack", bake.String())
		e := newEnv(b, s)
		e.opts.SkipVerify = true
		if _, err := build.Build(context.Background(), e.opts); err != nil {
			b.Fatalf("build: %v", err)
		}
		for _, ev := range e.rec.Events() {
			if ev.Kind != event.StepDone {
				continue
			}
			a, aerr := time.ParseDuration(ev.Fields[proto.FieldAck])
			r, rerr := time.ParseDuration(ev.Msg)
			if aerr != nil || rerr != nil {
				b.Fatalf("step.done %s: ack %q, took %q", ev.Name, ev.Fields[proto.FieldAck], ev.Msg)
			}
			acks, runs = append(acks, a), append(runs, r)
		}
	}
	slices.Sort(acks)
	slices.Sort(runs)
	med := func(d []time.Duration) time.Duration { return d[len(d)/2] }
	p90 := func(d []time.Duration) time.Duration { return d[len(d)*9/10] }
	b.ReportMetric(float64(med(acks).Microseconds())/1000, "ack-ms-p50")
	b.ReportMetric(float64(p90(acks).Microseconds())/1000, "ack-ms-p90")
	b.ReportMetric(float64(med(runs).Microseconds())/1000, "step-ms-p50")
	b.ReportMetric(float64(med(acks))/float64(med(runs)), "ack/step")
}

// TestVMOutputDiskFull: the output directory's filesystem is too small for
// the bundle. The build fails naming the path and the lack of space,
// leaves nothing in the output directory, and the previous bundle stays.
func TestVMOutputDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	e := newEnv(t, tinyStack(t, "tiny-full", "  - name: x\n    run: [/bin/true]\n"))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", e.out).CombinedOutput(); err != nil {
		t.Skipf("mount a small tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", e.out).Run() })
	e.previous(t)
	_, err := build.Build(context.Background(), e.opts)
	if err == nil {
		t.Fatal("a build into a full filesystem succeeded")
	}
	if !strings.Contains(err.Error(), e.out) || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("error = %v, want the output path and \"no space left on device\"", err)
	}
	e.checkAftermath(t, true)
}
