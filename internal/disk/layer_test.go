package disk

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/command"
)

// baseTar is a small base tree as mmdebstrap's tarballs have it: "./"
// names, owners other than root, a device node, a hard link, a setuid
// program, merged /usr and a kernel in /boot.
func baseTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Unix(1700000000, 0)
	add := func(h *tar.Header, data string) {
		h.ModTime = now
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if data != "" {
			tw.Write([]byte(data))
		}
	}
	dir := func(name string, mode int64, uid int) {
		add(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}, "")
	}
	dir("./", 0o755, 0)
	dir("./usr/", 0o755, 0)
	dir("./usr/lib/", 0o755, 0)
	dir("./usr/bin/", 0o755, 0)
	dir("./etc/", 0o755, 0)
	dir("./dev/", 0o755, 0)
	dir("./boot/", 0o755, 0)
	dir("./var/", 0o755, 0)
	dir("./var/lib/", 0o755, 0)
	dir("./var/lib/postgresql/", 0o700, 105)
	add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "./lib", Linkname: "usr/lib", Mode: 0o777}, "")
	add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "./etc/resolv.conf", Linkname: "/run/resolv.conf", Mode: 0o777}, "")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./etc/hostname", Mode: 0o644}, "base\n")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./var/lib/postgresql/PG_VERSION", Mode: 0o600, Uid: 105, Gid: 109}, "16\n")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./usr/bin/perl", Mode: 0o755}, "perl\n")
	add(&tar.Header{Typeflag: tar.TypeLink, Name: "./usr/bin/perl5.40", Linkname: "./usr/bin/perl"}, "")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./usr/bin/su", Mode: 0o4755}, "su\n")
	add(&tar.Header{Typeflag: tar.TypeChar, Name: "./dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, "")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./boot/vmlinuz-6.1.0-1-cloud-amd64", Mode: 0o644}, "kernel")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./boot/initrd.img-6.1.0-1-cloud-amd64", Mode: 0o644}, "initrd")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerDir is what the build adds: a file replacing a base file, one
// through the /lib symlink, a new directory, a symlink replacing a base
// symlink.
func layerDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	write := func(rel, data string, mode os.FileMode) {
		p := filepath.Join(d, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	write("etc/hostname", "emu\n", 0o644)
	write("lib/systemd/system/emu-agent.service", "[Unit]\n", 0o644)
	write("usr/local/bin/emu-agent", "agent", 0o755)
	if err := os.Symlink("/etc/emu/resolv.conf", filepath.Join(d, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	return d
}

func readTar(t *testing.T, b []byte) map[string]*tar.Header {
	t.Helper()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got[guestPath(h.Name)] = h
	}
}

func TestCompose(t *testing.T) {
	saved := map[string]string{}
	var out bytes.Buffer
	c, err := Compose(context.Background(), bytes.NewReader(baseTar(t)), Layer{
		Dir:  layerDir(t),
		Take: func(name string) bool { return strings.HasPrefix(name, "/boot/") },
		Save: func(name string, r io.Reader) error {
			b, err := io.ReadAll(r)
			saved[name] = string(b)
			return err
		},
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if saved["/boot/vmlinuz-6.1.0-1-cloud-amd64"] != "kernel" || saved["/boot/initrd.img-6.1.0-1-cloud-amd64"] != "initrd" {
		t.Errorf("saved = %q", saved)
	}
	got := readTar(t, out.Bytes())
	if _, ok := got["/boot/vmlinuz-6.1.0-1-cloud-amd64"]; ok {
		t.Error("the kernel is still in the tree")
	}
	// Through the /lib symlink: at its target, and no "lib/" directory
	// entry that would clash with the symlink.
	if h := got["/usr/lib/systemd/system/emu-agent.service"]; h == nil || h.Uid != 0 || h.Mode != 0o644 {
		t.Errorf("unit through /lib: %+v", h)
	}
	if h := got["/lib"]; h == nil || h.Typeflag != tar.TypeSymlink {
		t.Errorf("/lib = %+v, want the base's symlink", h)
	}
	if h := got["/usr/local/bin/emu-agent"]; h == nil || h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 {
		t.Errorf("agent: %+v", h)
	}
	if h := got["/usr/local"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o755 {
		t.Errorf("new directory /usr/local: %+v", h)
	}
	if h := got["/etc/resolv.conf"]; h == nil || h.Linkname != "/etc/emu/resolv.conf" {
		t.Errorf("resolv.conf: %+v", h)
	}
	if h := got["/var/lib/postgresql/PG_VERSION"]; h == nil || h.Uid != 105 || h.Gid != 109 || h.Mode != 0o600 {
		t.Errorf("base owner lost: %+v", h)
	}
	// Regular files: hostname (replaced), PG_VERSION, perl, su, unit, agent.
	if want := int64(len("emu\n") + len("16\n") + len("perl\n") + len("su\n") + len("[Unit]\n") + len("agent")); c.Size != want {
		t.Errorf("size = %d, want %d", c.Size, want)
	}
}

func TestResolveParent(t *testing.T) {
	links := map[string]string{
		"/lib":     "usr/lib",
		"/usr/lib": "/opt/lib", // a second hop, absolute
		"/a":       "b",
		"/b":       "a",
	}
	for in, want := range map[string]string{
		"/lib/x/y":     "/opt/lib/x/y",
		"/etc/x":       "/etc/x",
		"/lib":         "/lib", // the last element stays
		"/usr/share/x": "/usr/share/x",
	} {
		if got, err := resolveParent(links, in); err != nil || got != want {
			t.Errorf("resolveParent(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	if _, err := resolveParent(links, "/a/x"); err == nil {
		t.Error("a symlink loop resolved")
	}
}

// tarMke2fs skips unless mke2fs reads tar files (1.47.1 or newer with
// libarchive); in CI, where install-deps provides it, it fails instead.
func tarMke2fs(t *testing.T) {
	t.Helper()
	out, _ := exec.Command(tool(t, "mke2fs"), "-V").CombinedOutput()
	if v, _, err := ParseMke2fsVersion(string(out)); err != nil || !ReadsTar(v) {
		if os.Getenv("CI") != "" {
			t.Fatalf("mke2fs cannot read tar files (%q); scripts/install-deps installs e2fsprogs 1.47.1 or newer", strings.TrimSpace(string(out)))
		}
		t.Skipf("mke2fs cannot read tar files: %s", strings.TrimSpace(string(out)))
	}
}

// oldMke2fs is the host's runner, except that mkfs.ext4 -V answers as
// mke2fs 1.47.0 (Debian 12's, which cannot read a tarball) does; it
// records what ran.
type oldMke2fs struct{ ran []string }

func (o *oldMke2fs) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	o.ran = append(o.ran, name+" "+strings.Join(args, " "))
	if name == "mkfs.ext4" && len(args) == 1 && args[0] == "-V" {
		return []byte("mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0\n"), nil
	}
	return command.Exec{}.Run(ctx, name, args...)
}

// TestMakeExt4FromTar makes a disk from a composed tar stream and reads
// back what came through: owners, modes, the device node, the hard link,
// the layered files. With an mke2fs that reads the tarball, as anyone;
// with one too old to (faked), root unpacks the tree first and gets the
// same disk, and a user gets an error that says what to install.
func TestMakeExt4FromTar(t *testing.T) {
	tarMke2fs(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.tar")
	f, err := os.Create(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compose(context.Background(), bytes.NewReader(baseTar(t)), Layer{Dir: layerDir(t)}, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("tarball", func(t *testing.T) {
		raw := filepath.Join(t.TempDir(), "disk.raw")
		if err := MakeExt4FromTar(ctx, command.Exec{}, root, raw, 16<<20); err != nil {
			t.Fatal(err)
		}
		checkComposedDisk(ctx, t, raw)
	})
	t.Run("old mke2fs, root", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("only root unpacks the tree with its owners")
		}
		out := t.TempDir()
		raw := filepath.Join(out, "disk.raw")
		r := &oldMke2fs{}
		if err := MakeExt4FromTar(ctx, r, root, raw, 16<<20); err != nil {
			t.Fatal(err)
		}
		if ran := strings.Join(r.ran, "\n"); !strings.Contains(ran, "tar -x -f "+root) || strings.Contains(ran, "-d "+root) {
			t.Errorf("the tree was not unpacked first:\n%s", ran)
		}
		checkComposedDisk(ctx, t, raw)
		if left, _ := filepath.Glob(filepath.Join(out, ".tree-*")); len(left) != 0 {
			t.Errorf("the unpacked tree is left: %v", left)
		}
	})
	t.Run("old mke2fs, a user", func(t *testing.T) {
		defer func(f func() int) { geteuid = f }(geteuid)
		geteuid = func() int { return 1000 }
		raw := filepath.Join(t.TempDir(), "disk.raw")
		err := MakeExt4FromTar(ctx, &oldMke2fs{}, root, raw, 16<<20)
		var me *Mke2fsError
		if !errors.As(err, &me) || !strings.Contains(err.Error(), "mke2fs 1.47.0 cannot read the root tarball "+root) ||
			!strings.Contains(me.HintText(), "install e2fsprogs 1.47.1 or newer") {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(raw); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a disk was left: %v", err)
		}
	})
}

func TestParseMke2fsVersion(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want [3]int
		text string
		tar  bool
	}{
		{"mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0\n", [3]int{1, 47, 0}, "1.47.0", false},
		{"mke2fs 1.47.2 (1-Jan-2025)\n", [3]int{1, 47, 2}, "1.47.2", true},
		{"mke2fs 1.46 (1-Jan-2020)\n", [3]int{1, 46, 0}, "1.46", false},
		{"mke2fs 1.47.1-rc1 (1-Jan-2024)", [3]int{1, 47, 1}, "1.47.1", true},
		{"warning: something\nmke2fs 1.48.0 (1-Jan-2026)", [3]int{1, 48, 0}, "1.48.0", true},
		{"mke2fs 2.0 (1-Jan-2030)", [3]int{2, 0, 0}, "2.0", true},
	} {
		v, text, err := ParseMke2fsVersion(tc.out)
		if err != nil || v != tc.want || text != tc.text || ReadsTar(v) != tc.tar {
			t.Errorf("ParseMke2fsVersion(%q) = %v, %q, %v (reads tar: %v); want %v, %q (%v)", tc.out, v, text, err, ReadsTar(v), tc.want, tc.text, tc.tar)
		}
	}
	if _, _, err := ParseMke2fsVersion("mkfs.ext4: invalid option -- 'V'\nusage..."); err == nil || !strings.Contains(err.Error(), "invalid option") {
		t.Errorf("garbage: error %v", err)
	}
}

// checkComposedDisk checks the disk made from Compose(baseTar, layerDir).
func checkComposedDisk(ctx context.Context, t *testing.T, raw string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, tool(t, "e2fsck"), "-fn", raw).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	stat := func(p string) string {
		out, err := exec.CommandContext(ctx, tool(t, "debugfs"), "-R", "stat "+p, raw).Output()
		if err != nil {
			t.Fatalf("debugfs stat %s: %v", p, err)
		}
		return string(out)
	}
	for p, want := range map[string][]string{
		"/var/lib/postgresql/PG_VERSION":            {"User:   105", "Group:   109", "Mode:  0600"},
		"/var/lib/postgresql":                       {"User:   105", "Mode:  0700"},
		"/usr/bin/su":                               {"Mode:  04755"},
		"/usr/bin/perl":                             {"Links: 2"},
		"/dev/null":                                 {"Type: character special", "Device major/minor number: 01:03"},
		"/usr/local/bin/emu-agent":                  {"User:     0", "Mode:  0755"},
		"/usr/lib/systemd/system/emu-agent.service": {"Type: regular"},
	} {
		got := stat(p)
		for _, w := range want {
			if !strings.Contains(strings.Join(strings.Fields(got), " "), strings.Join(strings.Fields(w), " ")) {
				t.Errorf("%s: want %q in\n%s", p, w, got)
			}
		}
	}
	out, err := exec.CommandContext(ctx, tool(t, "debugfs"), "-R", "cat /etc/hostname", raw).Output()
	if err != nil || string(out) != "emu\n" {
		t.Errorf("/etc/hostname = %q, %v; want the layer's", out, err)
	}
}

// tool finds a program in PATH or the sbin directories.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := command.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
