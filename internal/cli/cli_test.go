package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "emu.yaml")
	os.WriteFile(bad, []byte("name: Bad_Name\nservices:\n  api:\n    helth: {tcp: 1}\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "two", "amd64"), 0o755)
	os.WriteFile(filepath.Join(dir, "two", "amd64", "api"), []byte("x"), 0o755)
	two := filepath.Join(dir, "two", "emu.yaml")
	os.WriteFile(two, []byte("name: two\nfiles:\n  - {src: \"./${arch}/api\", dst: /usr/local/bin/api}\n"), 0o644)
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr []string
		stdout string
	}{
		{"help", []string{"--help"}, ExitOK, nil, "Commands:"},
		{"unknown command", []string{"frobnicate"}, ExitUsage, []string{`unknown command "frobnicate"`}, ""},
		{"bad flag", []string{"build", "--nope"}, ExitUsage, []string{"flag provided but not defined: -nope"}, ""},
		{"stray argument", []string{"build", "extra"}, ExitUsage, []string{"build takes no arguments"}, ""},
		{"missing stack file", []string{"build", "-f", filepath.Join(dir, "none.yaml")}, ExitUsage, []string{"none.yaml", "-f FILE"}, ""},
		{"invalid stack file", []string{"build", "-f", bad}, ExitUsage, []string{"emu.yaml:4", "helth"}, ""},
		{"unknown arch", []string{"build", "-f", two, "--arch", "amd64,riscv64"}, ExitUsage, []string{`--arch amd64,riscv64: unknown architecture "riscv64"`}, ""},
		{"arch twice", []string{"build", "-f", two, "--arch", "amd64,amd64"}, ExitUsage, []string{"amd64 named twice"}, ""},
		{"arch without its file", []string{"build", "-f", two, "--arch", "amd64,arm64"}, ExitUsage, []string{"files[0].src: ./${arch}/api for arm64"}, ""},
		{"verify without bundle", []string{"verify", filepath.Join(dir, "nothing")}, ExitFailure, []string{"no bundle at", "hint: build it first"}, ""},
		{"version", []string{"version"}, ExitOK, nil, "emu "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("EMU_HOME", t.TempDir())
			out, errs, code := run(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, tt.code, errs)
			}
			for _, s := range tt.stderr {
				if !strings.Contains(errs, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errs)
				}
			}
			if tt.stdout != "" && !strings.Contains(out, tt.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tt.stdout, out)
			}
			if n := strings.Count(errs, "emu: "); n > 1 {
				t.Errorf("error rendered %d times:\n%s", n, errs)
			}
		})
	}
}

func TestSchemaIsJSON(t *testing.T) {
	out, _, code := run(t, "schema")
	if code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
}

// EMU_AGENT must name an agent; what is wrong with it is said (the lookup
// itself is agentbin's, tested there).
func TestAgentBinaryFromEnv(t *testing.T) {
	home := store.At(t.TempDir())
	p := filepath.Join(t.TempDir(), "emu-agent")
	os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
	t.Setenv("EMU_AGENT", p)
	if _, err := (&env{getenv: os.Getenv}).agentBinary(home, "amd64"); err == nil || !strings.Contains(err.Error(), "EMU_AGENT") {
		t.Errorf("agentBinary with a script as EMU_AGENT: %v", err)
	}
	t.Setenv("EMU_AGENT", p+".missing")
	if _, err := (&env{getenv: os.Getenv}).agentBinary(home, "amd64"); err == nil {
		t.Errorf("agentBinary with a missing EMU_AGENT: no error")
	}
}

func TestParseInterspersed(t *testing.T) {
	fs := newFlags(&env{stderr: &bytes.Buffer{}}, "verify", "")
	j := fs.Bool("json", false, "")
	pos, err := parse(fs, []string{"dir", "--json"})
	if err != nil || !*j || len(pos) != 1 || pos[0] != "dir" {
		t.Errorf("parse = %v, %v, json=%v", pos, err, *j)
	}
}

// down and reset report as events: with --json, JSON lines on stdout
// ending in one done; without, the same outcome as a line on stderr.
func TestDownResetJSON(t *testing.T) {
	home := t.TempDir()
	t.Setenv("EMU_HOME", home)
	// An instance with data and no QEMU: down says it is not running,
	// reset removes the data.
	inst := filepath.Join(home, "state", "instances", "demo")
	if err := os.MkdirAll(inst, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inst, "overlay.qcow2"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		verb, last string
		gone       bool
	}{
		{"down", "demo is not running", false},
		{"reset", "demo reset: its data is gone; the image is kept", true},
	} {
		out, errs, code := run(t, tc.verb, "--json", "demo")
		if code != ExitOK {
			t.Fatalf("%s --json: exit %d: %s", tc.verb, code, errs)
		}
		var kinds []string
		var last map[string]any
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if err := json.Unmarshal([]byte(line), &last); err != nil {
				t.Fatalf("%s --json: line %q is not JSON: %v", tc.verb, line, err)
			}
			kinds = append(kinds, last["kind"].(string))
		}
		if kinds[len(kinds)-1] != "done" || last["msg"] != tc.last {
			t.Errorf("%s --json: kinds %v, last %v; want one done saying %q", tc.verb, kinds, last, tc.last)
		}
		if _, err := os.Stat(inst); (err != nil) != tc.gone {
			t.Errorf("after %s: instance directory stat = %v", tc.verb, err)
		}
	}
	_, errs, code := run(t, "down", "demo")
	if code != ExitOK || strings.TrimSpace(errs) != "demo is not running" {
		t.Errorf("down without --json: exit %d, stderr %q", code, errs)
	}
}

// A signal while the stack file loads is answered at once: here the file is
// a FIFO nobody writes, so the load itself never ends.
func TestLoadStackInterrupted(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "emu.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	done := make(chan error, 1)
	go func() {
		_, err := loadStack(ctx, fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("loadStack = %v, want interrupted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("loadStack did not return after its context ended")
	}
	// Let the loader's goroutine go: open the FIFO's other end.
	if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
		f.Close()
	}
}

// reset keeps the image's ready snapshot unless --template asks.
func TestResetTemplate(t *testing.T) {
	home := t.TempDir()
	t.Setenv("EMU_HOME", home)
	inst := filepath.Join(home, "state", "instances", "demo")
	tmpl := filepath.Join(home, "cache", "disks", "abc", "template")
	for _, template := range []bool{false, true} {
		os.MkdirAll(inst, 0o700)
		os.MkdirAll(tmpl, 0o700)
		os.WriteFile(filepath.Join(inst, "instance.json"), []byte(`{"name":"demo","disk_sha256":"abc"}`), 0o600)
		os.WriteFile(filepath.Join(tmpl, "state.zst"), []byte("state"), 0o600)
		args := []string{"reset", "demo"}
		if template {
			args = append(args, "--template")
		}
		if _, errs, code := run(t, args...); code != ExitOK {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		_, err := os.Stat(tmpl)
		if template != os.IsNotExist(err) {
			t.Errorf("%v: ready snapshot exists %v", args, err == nil)
		}
		if _, err := os.Stat(inst); !os.IsNotExist(err) {
			t.Errorf("%v: instance directory kept", args)
		}
	}
}

// up from a stack file runs the stack's image for the host's architecture
// when the store has one (NAME.ARCH), else the stack's own, saying that it
// runs emulated.
func TestHostArchTarget(t *testing.T) {
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "emu.yaml")
	os.WriteFile(path, []byte("name: two\nbase: {arch: "+other+"}\n"), 0o644)
	s, err := spec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	home := store.At(t.TempDir())
	own := target{name: "two", stack: s, bundle: filepath.Join(home.Images(), "two")}
	var errb bytes.Buffer
	e := &env{stderr: &errb}
	got, err := hostArchTarget(e, home, own)
	if err != nil || got.bundle != own.bundle || got.stack.Base.Arch != other {
		t.Errorf("no native image: %+v, %v; want the stack's own", got, err)
	}
	if !strings.Contains(errb.String(), "runs emulated") || !strings.Contains(errb.String(), "emu build --arch "+runtime.GOARCH) {
		t.Errorf("no word of emulation: %q", errb.String())
	}
	native := filepath.Join(home.Images(), "two."+runtime.GOARCH)
	os.MkdirAll(native, 0o755)
	os.WriteFile(filepath.Join(native, store.BundleManifest), []byte(`{"name":"two","arch":"`+runtime.GOARCH+`"}`), 0o644)
	errb.Reset()
	got, err = hostArchTarget(e, home, own)
	if err != nil || got.bundle != native || got.stack.Base.Arch != runtime.GOARCH || got.stack.Base.Kernel != "linux-image-cloud-"+runtime.GOARCH {
		t.Errorf("with a native image: bundle %s arch %s kernel %s, %v", got.bundle, got.stack.Base.Arch, got.stack.Base.Kernel, err)
	}
	if errb.Len() != 0 {
		t.Errorf("said %q running a native image", errb.String())
	}

	// up NAME: the same choice, from the stored image's manifest.
	os.MkdirAll(own.bundle, 0o755)
	os.WriteFile(filepath.Join(own.bundle, store.BundleManifest), []byte(`{"name":"two","arch":"`+other+`"}`), 0o644)
	named := target{name: "two", bundle: own.bundle}
	if got := hostArchNamed(e, home, named); got.bundle != native || got.name != "two" || errb.Len() != 0 {
		t.Errorf("up two with two.%s stored: %+v, said %q", runtime.GOARCH, got, errb.String())
	}
	// A bundle named by its path runs as it is.
	byPath := target{name: "two", bundle: filepath.Join(t.TempDir(), "two")}
	os.MkdirAll(byPath.bundle, 0o755)
	os.WriteFile(filepath.Join(byPath.bundle, store.BundleManifest), []byte(`{"name":"two","arch":"`+other+`"}`), 0o644)
	if got := hostArchNamed(e, home, byPath); got.bundle != byPath.bundle {
		t.Errorf("a bundle by path: %+v", got)
	}
	os.RemoveAll(native)
	if got := hostArchNamed(e, home, named); got.bundle != own.bundle || !strings.Contains(errb.String(), "runs emulated") {
		t.Errorf("no native image: %+v, said %q", got, errb.String())
	}
}
