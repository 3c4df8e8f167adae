// Package vmtest gives VM tests a tiny real guest: Debian's cloud kernel,
// a small initramfs that mounts the ext4 root, and a base tree of busybox
// plus an init that runs emu-agent. It boots to the agent in a few seconds
// under TCG, so the real pipeline (inject, disk, provision, compress,
// bundle) runs in tests without mmdebstrap.
package vmtest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Skip skips t when VM tests cannot or should not run: -short, or no QEMU.
// In CI (CI set) a missing tool fails instead, so VM tests never vanish
// silently there.
func Skip(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("VM test: skipped with -short")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(t, fmt.Sprintf("VM test needs %s: %v", tool, err))
		}
	}
}

func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// CacheDir holds what VM tests download or build once: the kernel.
func CacheDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("EMU_TEST_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("cache dir: %v", err)
	}
	return filepath.Join(d, "emu-test")
}

// modules are loaded by the initramfs, in dependency order.
var modules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
	"virtio_pci", "virtio_blk", "virtio_console",
}

var kernelOnce sync.Once
var kernelDir string
var kernelErr error

// Kernel returns a directory with vmlinuz and the virtio modules (*.ko),
// taken from Debian's linux-image-cloud-amd64 package with apt-get
// download, once, into the cache.
func Kernel(t testing.TB) string {
	t.Helper()
	kernelOnce.Do(func() { kernelDir, kernelErr = fetchKernel(filepath.Join(CacheDir(t), "kernel")) })
	if kernelErr != nil {
		missing(t, "VM test kernel: "+kernelErr.Error())
	}
	return kernelDir
}

func fetchKernel(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "vmlinuz")); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp("", "emu-kernel-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	run := func(name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return string(out), nil
	}
	if _, err := run("apt-get", "download", "linux-image-cloud-amd64"); err != nil {
		return "", err
	}
	metas, _ := filepath.Glob(filepath.Join(tmp, "linux-image-cloud-amd64_*.deb"))
	if len(metas) == 0 {
		return "", fmt.Errorf("apt-get download linux-image-cloud-amd64: no package")
	}
	deps, err := run("dpkg-deb", "-f", metas[0], "Depends")
	if err != nil {
		return "", err
	}
	pkg := regexp.MustCompile(`linux-image-[0-9][^ ,(]*-cloud-amd64`).FindString(deps)
	if pkg == "" {
		return "", fmt.Errorf("no kernel package in %q", deps)
	}
	if _, err := run("apt-get", "download", pkg); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("apt-get download %s: no package", pkg)
	}
	if _, err := run("dpkg-deb", "-x", debs[0], "x"); err != nil {
		return "", err
	}
	stage := filepath.Join(tmp, "kernel")
	os.MkdirAll(stage, 0o755)
	ks, _ := filepath.Glob(filepath.Join(tmp, "x", "boot", "vmlinuz-*"))
	if len(ks) != 1 {
		return "", fmt.Errorf("%s: want one vmlinuz, found %d", pkg, len(ks))
	}
	if err := copyTo(ks[0], filepath.Join(stage, "vmlinuz")); err != nil {
		return "", err
	}
	for _, m := range modules {
		found, _ := filepath.Glob(filepath.Join(tmp, "x", "lib", "modules", "*", "kernel", "drivers", "*", m+".ko*"))
		if len(found) == 0 {
			found, _ = filepath.Glob(filepath.Join(tmp, "x", "lib", "modules", "*", "kernel", "drivers", "*", "*", m+".ko*"))
		}
		if len(found) == 0 {
			return "", fmt.Errorf("%s: module %s not found", pkg, m)
		}
		if strings.HasSuffix(found[0], ".xz") || strings.HasSuffix(found[0], ".zst") {
			return "", fmt.Errorf("%s: compressed module %s not supported", pkg, found[0])
		}
		if err := copyTo(found[0], filepath.Join(stage, m+".ko")); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(stage, dir); err != nil {
		return "", err
	}
	return dir, nil
}

func copyTo(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// initScript mounts the ext4 root and switches to it.
const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ` + "virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console" + `; do
  insmod /lib/modules/$m.ko || echo "emu-test: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "emu-test: cannot mount /dev/vda"; poweroff -f; }
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
`

// guestInit runs the agent in the tree and powers off when it returns.
const guestInit = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# A test's hook: crash the kernel on this boot only, before the agent.
if [ -e /emu-test-crash-once ]; then
	rm /emu-test-crash-once
	sync
	echo "emu-test: crashing before the agent"
	mount -t proc proc /proc
	echo c > /proc/sysrq-trigger
fi
echo "emu-test: starting agent"
/usr/local/sbin/emu-agent
echo "emu-test: agent exited with $?"
sync
poweroff -f
`

// applets are linked to busybox in the tree.
var applets = []string{
	"sh", "mount", "umount", "poweroff", "sleep", "echo", "cat", "mkdir", "sync",
	"true", "false", "ls", "id", "dd", "head", "seq", "rm", "yes", "env", "sort",
}

var agentOnce sync.Once
var agentPath string
var agentErr error

// Agent builds emu-agent (static) once per test binary and returns its path.
func Agent(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "emu-agent-")
		if err != nil {
			agentErr = err
			return
		}
		agentPath = filepath.Join(dir, "emu-agent")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentPath, "github.com/emu-dev/emu/cmd/emu-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("build emu-agent: %w: %s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentPath
}

// BaseTarball writes the tiny guest's base tree as a .tar.zst in dir and
// returns its path: busybox, an init that runs the agent, and /boot with the
// kernel and an initramfs (the names the build looks for).
func BaseTarball(t testing.TB, dir string) string {
	t.Helper()
	kdir := Kernel(t)
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		missing(t, "VM test needs a static /bin/busybox (busybox-static): "+err.Error())
	}
	kernel, err := os.ReadFile(filepath.Join(kdir, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := initramfs(kdir, busybox)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Unix(1_700_000_000, 0)
	dirEntry := func(name string) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: now})
		tw.Write(data)
	}
	for _, d := range []string{".", "bin", "sbin", "boot", "etc", "proc", "sys", "dev", "run", "tmp", "root", "usr", "usr/local", "usr/local/sbin", "var", "var/tmp"} {
		dirEntry("./" + d)
	}
	file("./bin/busybox", 0o755, busybox)
	for _, a := range applets {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "./bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	file("./sbin/init", 0o755, []byte(guestInit))
	file("./boot/vmlinuz-test", 0o644, kernel)
	file("./boot/initrd.img-test", 0o644, initrd)
	file("./etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	file("./etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(dir, "tiny-base.tar")
	if err := os.WriteFile(tarPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zstd", "-q", "-f", "--rm", tarPath).CombinedOutput(); err != nil {
		t.Fatalf("zstd: %v: %s", err, out)
	}
	return tarPath + ".zst"
}

// initramfs is a newc cpio archive with /init, busybox and the modules.
func initramfs(kdir string, busybox []byte) ([]byte, error) {
	var w cpioWriter
	w.dir("bin")
	w.dir("lib")
	w.dir("lib/modules")
	w.file("bin/busybox", 0o755, busybox)
	w.file("init", 0o755, []byte(initScript))
	for _, m := range modules {
		b, err := os.ReadFile(filepath.Join(kdir, m+".ko"))
		if err != nil {
			return nil, err
		}
		w.file("lib/modules/"+m+".ko", 0o644, b)
	}
	return w.close(), nil
}

// cpioWriter writes the "newc" format the kernel unpacks into its rootfs.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) entry(name string, mode uint32, data []byte) {
	w.ino++
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string)                         { w.entry(name, 0o040755, nil) }
func (w *cpioWriter) file(name string, perm uint32, b []byte) { w.entry(name, 0o100000|perm, b) }

func (w *cpioWriter) close() []byte {
	w.entry("TRAILER!!!", 0, nil)
	return w.buf.Bytes()
}
