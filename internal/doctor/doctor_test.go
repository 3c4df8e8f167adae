package doctor

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/qemu"
)

func fakeLookPath(have ...string) func(string) (string, error) {
	return func(name string) (string, error) {
		for _, h := range have {
			if h == name {
				return "/usr/bin/" + name, nil
			}
		}
		return "", exec.ErrNotFound
	}
}

func fakeFree(n int64) func(string) (int64, error) {
	return func(string) (int64, error) { return n, nil }
}

func tcgChoice(context.Context, string, string) (accel.Choice, error) {
	return accel.Choice{Accel: qemu.TCG, Reason: "tcg: /dev/kvm opens but a probe guest failed", TimeoutScale: 8}, nil
}

func kvmChoice(context.Context, string, string) (accel.Choice, error) {
	return accel.Choice{Accel: qemu.KVM, Reason: "kvm: probe ran", TimeoutScale: 1}, nil
}

var all = []string{"qemu-system-x86_64", "qemu-system-aarch64", "qemu-img", "zstd", "tar", "mmdebstrap", "mkfs.ext4"}

func TestRunAllPresent(t *testing.T) {
	r := Run(context.Background(), Options{
		Dir: "/img", NeedBuild: true, GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath(all...), FreeSpace: fakeFree(50 << 30), Choose: kvmChoice,
	})
	if !r.OK() || len(r.Missing()) != 0 {
		t.Fatalf("report not OK: %+v", r.Checks)
	}
	if r.Accel.Accel != qemu.KVM {
		t.Errorf("Accel = %+v", r.Accel)
	}
	var names []string
	for _, c := range r.Checks {
		names = append(names, c.Name)
	}
	want := "qemu-system-x86_64 qemu-img zstd tar mmdebstrap mkfs.ext4 disk space accelerator"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("checks %q, want %q", got, want)
	}
	var b strings.Builder
	r.Write(&b)
	if strings.Contains(b.String(), "apt-get") || strings.Contains(b.String(), "MISSING") {
		t.Errorf("Write suggests fixes for a healthy host:\n%s", b.String())
	}
}

func TestRunMissingLinux(t *testing.T) {
	r := Run(context.Background(), Options{
		Dir: "/img", NeedBuild: true, GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath("tar", "zstd"), FreeSpace: fakeFree(5 << 30), Choose: tcgChoice,
	})
	if r.OK() {
		t.Fatal("OK with qemu missing")
	}
	var missing []string
	for _, c := range r.Missing() {
		missing = append(missing, c.Name)
	}
	if got, want := strings.Join(missing, " "), "qemu-system-x86_64 qemu-img mmdebstrap mkfs.ext4"; got != want {
		t.Errorf("missing %q, want %q", got, want)
	}
	want := "apt-get install -y --no-install-recommends e2fsprogs mmdebstrap qemu-system-x86 qemu-utils"
	if got := r.FixCommand(); got != want {
		t.Errorf("FixCommand = %q, want %q", got, want)
	}
	var b strings.Builder
	r.Write(&b)
	out := b.String()
	for _, s := range []string{want, "MISSING  qemu-img", "warn     disk space", "5.0 GiB free in /img", "warn     accelerator", "timeouts x8"} {
		if !strings.Contains(out, s) {
			t.Errorf("Write output lacks %q:\n%s", s, out)
		}
	}
}

func TestRunNoBuild(t *testing.T) {
	r := Run(context.Background(), Options{
		GuestArch: "arm64", GOOS: "linux",
		LookPath: fakeLookPath("qemu-img", "zstd", "tar"), Choose: tcgChoice,
	})
	for _, c := range r.Checks {
		if c.Name == "mmdebstrap" || c.Name == "mkfs.ext4" || c.Name == "disk space" {
			t.Errorf("unexpected check %q without NeedBuild and Dir", c.Name)
		}
	}
	if got := r.FixCommand(); got != "apt-get install -y --no-install-recommends qemu-system-arm" {
		t.Errorf("FixCommand = %q", got)
	}
}

func TestRunDarwin(t *testing.T) {
	r := Run(context.Background(), Options{
		NeedBuild: true, GuestArch: "arm64", GOOS: "darwin",
		LookPath: fakeLookPath("tar"), Choose: tcgChoice,
	})
	if got, want := r.FixCommand(), "brew install qemu"; got != want {
		t.Errorf("FixCommand = %q, want %q", got, want)
	}
	// A Mac runs bundles built on Linux: no build tools are checked.
	for _, c := range r.Checks {
		switch c.Name {
		case "mmdebstrap", "mkfs.ext4", "zstd", "tar":
			t.Errorf("darwin checks build tool %s", c.Name)
		}
	}
	var b strings.Builder
	r.Write(&b)
	if strings.Contains(b.String(), "apt-get") {
		t.Errorf("darwin output:\n%s", b.String())
	}
}

func TestDiskAndAccelFailures(t *testing.T) {
	r := Run(context.Background(), Options{
		Dir: "/img", GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath(all...), FreeSpace: fakeFree(1 << 30),
		Choose: func(context.Context, string, string) (accel.Choice, error) {
			return accel.Choice{}, errors.New(`accel "xen": unknown`)
		},
	})
	var names []string
	for _, c := range r.Missing() {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, " "); got != "disk space accelerator" {
		t.Errorf("missing %q", got)
	}
	if r.FixCommand() != "" {
		t.Errorf("FixCommand = %q, want none", r.FixCommand())
	}
	var b strings.Builder
	r.Write(&b)
	if !strings.Contains(b.String(), "disk space: free space in /img") {
		t.Errorf("output:\n%s", b.String())
	}
}

func TestBadGuestArch(t *testing.T) {
	r := Run(context.Background(), Options{GuestArch: "mips", LookPath: fakeLookPath(), Choose: kvmChoice})
	if r.OK() {
		t.Error("OK for guest arch mips")
	}
}

func TestFreeSpaceMissingDir(t *testing.T) {
	n, err := freeSpace(filepath.Join(t.TempDir(), "not", "yet"))
	if err != nil || n <= 0 {
		t.Errorf("freeSpace = %d, %v", n, err)
	}
}
