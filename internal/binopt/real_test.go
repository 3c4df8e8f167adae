package binopt

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/command"
)

func hostArch(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skipf("binopt runs on linux/amd64 or linux/arm64, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	return runtime.GOARCH
}

const goProg = `package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("hello-go 1.0")
		return
	}
	os.Exit(3)
}
`

// cProg exits 1 when its own file no longer holds its marker, as a packed
// copy does not: a binary that breaks under UPX.
const cProg = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char marker[] = "EMU-SELF" "CHECK-MARKER";

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "selfcheck") == 0) {
		FILE *f = fopen("/proc/self/exe", "rb");
		if (!f) return 2;
		static char buf[64 << 20];
		size_t n = fread(buf, 1, sizeof buf, f);
		fclose(f);
		for (size_t i = 0; i + sizeof marker - 1 <= n; i++)
			if (memcmp(buf + i, marker, sizeof marker - 1) == 0) { puts("hello-c intact"); return 0; }
		puts("hello-c tampered");
		return 1;
	}
	puts("hello-c 1.0");
	return 0;
}
`

const libProg = `int add(int a, int b) { return a + b; }
`

// builder makes a test input in dir and returns its path.
type builder func(t *testing.T, dir string) string

func goBuild(env []string, flags ...string) builder {
	return func(t *testing.T, dir string) string {
		t.Helper()
		src := filepath.Join(dir, "main.go")
		writeFile(t, src, goProg)
		out := filepath.Join(dir, "hello-go")
		run(t, dir, env, append(append([]string{"go", "build", "-o", out}, flags...), src)...)
		return out
	}
}

func gccBuild(prog string, flags ...string) builder {
	return func(t *testing.T, dir string) string {
		t.Helper()
		if _, err := exec.LookPath("gcc"); err != nil {
			t.Skip("no gcc")
		}
		src := filepath.Join(dir, "prog.c")
		writeFile(t, src, prog)
		out := filepath.Join(dir, "hello-c")
		run(t, dir, nil, append(append([]string{"gcc", "-O2", "-o", out}, flags...), src)...)
		return out
	}
}

func fileWith(content string, mode os.FileMode) builder {
	return func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "file")
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// truncatedCopy is the first half of what b builds.
func truncatedCopy(b builder) builder {
	return func(t *testing.T, dir string) string {
		p := b(t, dir)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data[:len(data)/2], 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, dir string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"GOFLAGS=", "GOCACHE=" + goCache(t)}, env...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func goCache(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOCACHE: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestDetect(t *testing.T) {
	arch := hostArch(t)
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[arch]
	tests := []struct {
		name  string
		build builder
		want  Kind
		why   string
	}{
		{"go", goBuild(nil), Executable, ""},
		{"go -s -w", goBuild(nil, "-ldflags=-s -w"), Executable, ""},
		{"go pie", goBuild(nil, "-buildmode=pie"), Executable, ""},
		{"go other arch", goBuild([]string{"GOARCH=" + other}), WrongArch, "built for " + other},
		{"c dynamic", gccBuild(cProg), Executable, ""},
		{"c no-pie", gccBuild(cProg, "-no-pie"), Executable, ""},
		{"c static", gccBuild(cProg, "-static"), Executable, ""},
		{"c static-pie", gccBuild(cProg, "-static-pie"), Executable, ""},
		{"shared library", gccBuild(libProg, "-shared", "-fPIC", "-Wl,-soname,libadd.so.1"), SharedLib, "soname libadd.so.1"},
		{"shared library without soname", gccBuild(libProg, "-shared", "-fPIC"), SharedLib, "shared object"},
		{"object file", gccBuild(libProg, "-c"), OtherELF, "ET_REL"},
		{"script", fileWith("#!/bin/sh\necho hi\n", 0o755), Script, "#!/bin/sh"},
		{"text", fileWith("hello\n", 0o644), NotELF, "not an ELF file"},
		{"empty", fileWith("", 0o644), NotELF, "not an ELF file"},
		{"ELF magic only", fileWith("\x7fELF", 0o755), Corrupt, "truncated"},
		{"truncated go", truncatedCopy(goBuild(nil)), Corrupt, ""},
		{"truncated c", truncatedCopy(gccBuild(cProg, "-static")), Corrupt, "truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.build(t, t.TempDir())
			got, err := Detect(p, arch)
			if got != tt.want {
				t.Fatalf("Detect = %s (%v), want %s", got, err, tt.want)
			}
			if tt.want == Executable {
				if err != nil {
					t.Errorf("Detect: %v", err)
				}
				return
			}
			var se *SkipError
			if !errors.As(err, &se) || !errors.Is(err, ErrSkipped) || se.Kind != tt.want {
				t.Fatalf("Detect error %v, want a *SkipError of kind %s", err, tt.want)
			}
			if !strings.Contains(se.Reason, tt.why) {
				t.Errorf("reason %q lacks %q", se.Reason, tt.why)
			}
		})
	}
	if _, err := Detect(filepath.Join(t.TempDir(), "nope"), arch); err == nil || errors.Is(err, ErrSkipped) {
		t.Errorf("Detect of a missing file: %v, want an I/O error", err)
	}
	if _, err := Detect("/bin/sh", "sparc"); err == nil {
		t.Error("Detect for sparc: no error")
	}
}

// needUPX finds UPX, skipping without it, except in CI where the
// dependencies are installed and the test must run.
func needUPX(t *testing.T) string {
	t.Helper()
	p, err := FindUPX()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %v", err)
		}
		t.Skipf("%v", err)
	}
	return p
}

func TestOptimizeReal(t *testing.T) {
	arch := hostArch(t)
	upx := needUPX(t)
	version := &Verify{Args: []string{"version"}, Output: "hello-"}
	tests := []struct {
		name     string
		build    builder
		verify   *Verify
		want     Candidate
		kind     Kind
		reason   string
		wantErr  error
		smaller  bool // the result is smaller than the original
		stripped bool // a stripped candidate was made and is smaller
	}{
		{name: "go", build: goBuild(nil), verify: version, want: Compressed, kind: Executable, smaller: true, stripped: true},
		{name: "go -s -w", build: goBuild(nil, "-ldflags=-s -w"), verify: version, want: Compressed, kind: Executable, smaller: true, stripped: true},
		{name: "c static", build: gccBuild(cProg, "-static"), verify: version, want: Compressed, kind: Executable, smaller: true, stripped: true},
		{name: "c dynamic", build: gccBuild(cProg), verify: version, want: Compressed, kind: Executable, smaller: true, stripped: true},
		{name: "c breaks under upx", build: gccBuild(cProg, "-static"), verify: &Verify{Args: []string{"selfcheck"}, Output: "intact"},
			want: Stripped, kind: Executable, smaller: true, stripped: true, reason: "the compressed file fails its verify (exit code 1, want 0)"},
		{name: "verify wrong for all", build: goBuild(nil), verify: &Verify{Args: []string{"nope"}},
			want: Original, kind: Executable, stripped: true, wantErr: ErrOriginalFails, reason: "nothing was kept but the original"},
		{name: "script", build: fileWith("#!/bin/sh\necho hello-sh\n", 0o755), verify: version, want: Original, kind: Script, reason: "a script"},
		{name: "shared library", build: gccBuild(libProg, "-shared", "-fPIC", "-Wl,-soname,libadd.so.1"), verify: version,
			want: Original, kind: SharedLib, reason: "shared library"},
		{name: "corrupt", build: truncatedCopy(gccBuild(cProg, "-static")), verify: version, want: Original, kind: Corrupt, reason: "truncated"},
		{name: "not ELF", build: fileWith("just text\n", 0o644), verify: version, want: Original, kind: NotELF, reason: "not an ELF file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.build(t, t.TempDir())
			orig, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			opts := Options{Arch: arch, Strip: true, Compress: CompressUPX, Level: 1, UPX: upx, Verify: tt.verify}
			rep, err := Optimize(context.Background(), command.Exec{}, p, p, opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Optimize: %v, want %v (report %+v)", err, tt.wantErr, rep)
			}
			if rep.Chosen != tt.want || rep.Kind != tt.kind {
				t.Errorf("chosen %s of kind %s, want %s of kind %s; reason: %s", rep.Chosen, rep.Kind, tt.want, tt.kind, rep.Reason)
			}
			if !strings.Contains(rep.Reason, tt.reason) {
				t.Errorf("reason %q lacks %q", rep.Reason, tt.reason)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(got)) != rep.Size() || rep.Original != int64(len(orig)) {
				t.Errorf("file has %d bytes, report: original %d, chosen %s of %d", len(got), rep.Original, rep.Chosen, rep.Size())
			}
			if rep.Chosen == Original && !bytes.Equal(got, orig) {
				t.Error("the original was kept, but its bytes changed")
			}
			if tt.smaller != (len(got) < len(orig)) {
				t.Errorf("result %d bytes, original %d: want smaller = %v", len(got), len(orig), tt.smaller)
			}
			if tt.stripped != (rep.Stripped > 0 && rep.Stripped < rep.Original) {
				t.Errorf("stripped %d of %d: want a smaller stripped file = %v", rep.Stripped, rep.Original, tt.stripped)
			}
			if rep.Kind == Executable && rep.Chosen != Original {
				// What was kept still runs.
				out, err := exec.Command(p, tt.verify.Args...).CombinedOutput()
				if err != nil || !strings.Contains(string(out), tt.verify.Output) {
					t.Errorf("the kept file: %v, %q", err, out)
				}
			}
			assertNoLeftovers(t, filepath.Dir(p))
		})
	}
}

// A binary for the other architecture (an arm64 service on an amd64 build
// host): detected as an executable of the stack's arch, stripped by a
// strip that reads it, and packed by UPX; the result is still a program
// of that architecture.
func TestOptimizeOtherArch(t *testing.T) {
	arch := hostArch(t)
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[arch]
	tool := StripTool(other, exec.LookPath)
	if tool == "strip" {
		t.Skipf("no strip for %s binaries here (binutils-%s-linux-gnu or llvm-strip)", other, map[string]string{"amd64": "x86-64", "arm64": "aarch64"}[other])
	}
	upx, err := FindUPX()
	if err != nil {
		t.Skipf("no upx: %v", err)
	}
	p := goBuild([]string{"GOARCH=" + other, "CGO_ENABLED=0"})(t, t.TempDir())
	rep, err := Optimize(context.Background(), command.Exec{}, p, p, Options{Arch: other, Strip: true, Compress: CompressUPX, Level: 1, UPX: upx})
	if err != nil {
		t.Fatalf("Optimize: %v (report %+v)", err, rep)
	}
	if rep.Kind != Executable || rep.Stripped == 0 || rep.Stripped >= rep.Original || rep.Chosen == Original {
		t.Errorf("report %+v: want an executable, stripped smaller, something better than the original kept", rep)
	}
	f, err := elf.Open(p)
	if err != nil {
		t.Fatalf("the result is no ELF: %v", err)
	}
	defer f.Close()
	if want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[other]; f.Machine != want {
		t.Errorf("result machine %s, want %s", f.Machine, want)
	}
	// The same file, for the host's arch, is another architecture's.
	if k, err := Detect(p, arch); k == Executable {
		t.Errorf("an %s binary detected as an executable for %s (%v)", other, arch, err)
	}
}
