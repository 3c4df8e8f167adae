package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/qemu"
)

func fakeLookPath(have ...string) func(string) (string, error) {
	return func(name string) (string, error) {
		for _, h := range have {
			switch {
			case h == name && strings.HasPrefix(name, "/"):
				return name, nil
			case h == name:
				return "/usr/bin/" + name, nil
			}
		}
		return "", exec.ErrNotFound
	}
}

// fakeHost fills what o leaves unset with a healthy fake Debian 12 host
// run by root, its e2fsprogs from bookworm-backports.
func fakeHost(o Options) Options {
	if o.Account == nil {
		o.Account = &Account{UID: 0, Name: "root", Groups: []int{0}}
	}
	if o.ReadFile == nil {
		o.ReadFile = fakeFiles(map[string]string{"/etc/os-release": "ID=debian\nVERSION_CODENAME=bookworm\n"})
	}
	if o.Exists == nil {
		o.Exists = fakeExists("/usr/lib/x86_64-linux-gnu/libarchive.so.13")
	}
	if o.OpenRW == nil {
		o.OpenRW = func(string) error { return nil }
	}
	if o.Privilege == nil {
		o.Privilege = func(string) (string, error) { return "setuid root", nil }
	}
	if o.Command == nil {
		o.Command = fakeCommand(map[string]string{"mke2fs -V": "mke2fs 1.47.2 (1-Jan-2025)\n\tUsing EXT2FS Library version 1.47.2\n"})
	}
	return o
}

// fakeFiles reads files from a map; others do not exist.
func fakeFiles(files map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
}

func fakeExists(have ...string) func(string) bool {
	return func(p string) bool { return slices.Contains(have, p) }
}

// fakeCommand answers "base-name args" with its output; others fail.
func fakeCommand(outputs map[string]string) func(context.Context, string, ...string) ([]byte, error) {
	return func(_ context.Context, name string, args ...string) ([]byte, error) {
		key := strings.Join(append([]string{filepath.Base(name)}, args...), " ")
		if out, ok := outputs[key]; ok {
			return []byte(out), nil
		}
		return nil, fmt.Errorf("%s: %w", key, exec.ErrNotFound)
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

var all = []string{"qemu-system-x86_64", "qemu-system-aarch64", "qemu-img", "zstd", "tar", "mmdebstrap", "mkfs.ext4", "mke2fs"}

func TestRunAllPresent(t *testing.T) {
	r := Run(context.Background(), fakeHost(Options{
		Dir: "/img", NeedBuild: true, GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath(all...), FreeSpace: fakeFree(50 << 30), Choose: kvmChoice,
	}))
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
	want := "qemu-system-x86_64 qemu-img zstd tar mmdebstrap mkfs.ext4 mke2fs version libarchive disk space accelerator"
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
	r := Run(context.Background(), fakeHost(Options{
		Dir: "/img", NeedBuild: true, GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath("tar", "zstd"), FreeSpace: fakeFree(5 << 30), Choose: tcgChoice,
	}))
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
	r := Run(context.Background(), fakeHost(Options{
		GuestArch: "arm64", GOOS: "linux",
		LookPath: fakeLookPath("qemu-img", "zstd", "tar"), Choose: tcgChoice,
	}))
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
	r := Run(context.Background(), fakeHost(Options{
		NeedBuild: true, GuestArch: "arm64", GOOS: "darwin",
		LookPath: fakeLookPath("tar"), Choose: tcgChoice,
	}))
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
	r := Run(context.Background(), fakeHost(Options{
		Dir: "/img", GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath(all...), FreeSpace: fakeFree(1 << 30),
		Choose: func(context.Context, string, string) (accel.Choice, error) {
			return accel.Choice{}, errors.New(`accel "xen": unknown`)
		},
	}))
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
	r := Run(context.Background(), fakeHost(Options{GuestArch: "mips", LookPath: fakeLookPath(), Choose: kvmChoice}))
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

// Building an arm64 guest's tree on an amd64 host needs qemu-user's
// binfmt handler, registered with the F flag; each way it can be missing
// gets its own fix.
func TestBinfmtForForeignTree(t *testing.T) {
	const conf = "/usr/lib/binfmt.d/qemu-aarch64.conf"
	const entry = "/proc/sys/fs/binfmt_misc/qemu-aarch64"
	good := "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n"
	for _, tc := range []struct {
		name    string
		files   map[string]string
		ok      bool
		want    string // in Detail
		fix     string // in Fix
		install bool   // the merged apt-get line names qemu-user-static
	}{
		{"registered", map[string]string{entry: good, conf: ""}, true, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "", false},
		{"not installed", map[string]string{}, false, "qemu-user-static not installed", "apt-get install -y --no-install-recommends qemu-user-static", true},
		{"not registered", map[string]string{conf: ""}, false, "not registered", "cat " + conf + " > /proc/sys/fs/binfmt_misc/register", false},
		{"disabled", map[string]string{entry: "disabled\nflags: POF\n", conf: ""}, false, "is disabled", "echo 1 > " + entry, false},
		{"no F flag", map[string]string{entry: "enabled\nflags: P\n", conf: ""}, false, "lacks the F flag", "echo -1 > " + entry, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Run(context.Background(), fakeHost(Options{
				NeedBuild: true, GuestArch: "arm64", HostArch: "amd64", GOOS: "linux",
				LookPath: fakeLookPath(append(all, "arch-test")...), Choose: tcgChoice,
				ReadFile: func(p string) ([]byte, error) {
					if s, ok := tc.files[p]; ok {
						return []byte(s), nil
					}
					return nil, errors.New("no such file")
				},
			}))
			var c *Check
			for i := range r.Checks {
				if r.Checks[i].Name == "binfmt qemu-aarch64" {
					c = &r.Checks[i]
				}
			}
			if c == nil {
				t.Fatalf("no binfmt check in %+v", r.Checks)
			}
			if c.OK != tc.ok || !strings.Contains(c.Detail, tc.want) || !strings.Contains(c.Fix, tc.fix) {
				t.Errorf("check = %+v; want ok=%v, detail with %q, fix with %q", *c, tc.ok, tc.want, tc.fix)
			}
			if got := strings.Contains(r.FixCommand(), "qemu-user-static"); got != tc.install {
				t.Errorf("FixCommand %q names qemu-user-static: %v, want %v", r.FixCommand(), got, tc.install)
			}
		})
	}
	// Without arch-test, mmdebstrap refuses a foreign tree: doctor says so.
	r := Run(context.Background(), fakeHost(Options{NeedBuild: true, GuestArch: "arm64", HostArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath(all...), Choose: tcgChoice, ReadFile: func(string) ([]byte, error) { return nil, errors.New("none") }}))
	if !strings.Contains(r.FixCommand(), "arch-test") {
		t.Errorf("no arch-test in the fix: %q", r.FixCommand())
	}
	// A guest of the host's own architecture needs no handler; nor does a
	// Mac, which builds nothing.
	for _, o := range []Options{{GuestArch: "amd64", HostArch: "amd64", GOOS: "linux"}, {GuestArch: "arm64", HostArch: "amd64", GOOS: "darwin"}} {
		o.NeedBuild, o.LookPath, o.Choose = true, fakeLookPath(all...), tcgChoice
		for _, c := range Run(context.Background(), fakeHost(o)).Checks {
			if strings.HasPrefix(c.Name, "binfmt") {
				t.Errorf("%s guest on %s/%s: a binfmt check", o.GuestArch, o.GOOS, o.HostArch)
			}
		}
	}
}
