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
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/command"
)

// Skip skips t when VM tests cannot or should not run: -short, or no QEMU.
// In CI (CI set) a missing tool fails instead, so VM tests never vanish
// silently there.
func Skip(t testing.TB) {
	t.Helper()
	SkipArch(t, "amd64")
}

// SkipArch is Skip for a guest of arch: amd64 or arm64 (which needs
// qemu-system-aarch64, from Debian's qemu-system-arm).
func SkipArch(t testing.TB, arch string) {
	t.Helper()
	if testing.Short() {
		t.Skip("VM test: skipped with -short")
	}
	qemu := map[string]string{"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}[arch]
	for _, tool := range []string{qemu, "qemu-img", "mkfs.ext4", "zstd"} {
		if _, err := command.LookPath(tool); err != nil {
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

// modules are loaded by the initramfs, in dependency order: the disk and
// the host channel, the network card the port forwards arrive on, fw_cfg,
// which carries an instance's runtime config, and nftables' NAT, which
// the agent uses for a service listening on 127.0.0.1 only.
var modules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
	"virtio_pci", "virtio_blk", "virtio_console",
	"failover", "net_failover", "virtio_net", "qemu_fw_cfg",
	"nfnetlink", "libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack",
	"nf_nat", "nf_tables", "nft_chain_nat", "nft_nat",
}

var (
	kernelMu   sync.Mutex
	kernelDirs = map[string]string{}
)

// Kernel returns a directory with vmlinuz and the modules (*.ko) of
// Debian's linux-image-cloud-amd64, and a static busybox, downloaded once
// into the cache.
func Kernel(t testing.TB) string {
	t.Helper()
	return KernelFor(t, "amd64")
}

// KernelFor is Kernel for a guest of arch. A foreign architecture's
// packages come through a private apt index of that architecture in the
// cache (the host's apt configuration is not touched).
func KernelFor(t testing.TB, arch string) string {
	t.Helper()
	kernelMu.Lock()
	defer kernelMu.Unlock()
	if d, ok := kernelDirs[arch]; ok {
		return d
	}
	name := "kernel"
	if arch != "amd64" {
		name += "-" + arch
	}
	d, err := fetchKernel(CacheDir(t), filepath.Join(CacheDir(t), name), arch)
	if err != nil {
		missing(t, "VM test kernel for "+arch+": "+err.Error())
	}
	kernelDirs[arch] = d
	return d
}

func fetchKernel(cache, dir, arch string) (string, error) {
	if complete(dir) {
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
	apt := []string{}
	if arch != runtime.GOARCH {
		// apt's own index of arch, beside the cache: the host's dpkg
		// need not know the architecture.
		lists := filepath.Join(cache, "apt-"+arch)
		for _, d := range []string{"lists/partial", "cache/archives/partial"} {
			os.MkdirAll(filepath.Join(lists, d), 0o755)
		}
		apt = []string{"-o", "APT::Architecture=" + arch, "-o", "APT::Architectures=" + arch,
			"-o", "Dir::State::Lists=" + filepath.Join(lists, "lists"), "-o", "Dir::Cache=" + filepath.Join(lists, "cache"),
			"-o", "Dir::State::status=/dev/null"}
		if _, err := run("apt-get", append(apt, "-q", "update")...); err != nil {
			return "", err
		}
	}
	download := func(pkg string) (string, error) {
		if _, err := run("apt-get", append(append([]string{}, apt...), "download", pkg)...); err != nil {
			return "", err
		}
		debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*_"+arch+".deb"))
		if len(debs) == 0 {
			return "", fmt.Errorf("apt-get download %s: no %s package", pkg, arch)
		}
		return debs[0], nil
	}
	meta, err := download("linux-image-cloud-" + arch)
	if err != nil {
		return "", err
	}
	deps, err := run("dpkg-deb", "-f", meta, "Depends")
	if err != nil {
		return "", err
	}
	pkg := regexp.MustCompile(`linux-image-[0-9][^ ,(]*-cloud-` + arch).FindString(deps)
	if pkg == "" {
		return "", fmt.Errorf("no kernel package in %q", deps)
	}
	deb, err := download(pkg)
	if err != nil {
		return "", err
	}
	if _, err := run("dpkg-deb", "-x", deb, "x"); err != nil {
		return "", err
	}
	bb, err := download("busybox-static")
	if err != nil {
		return "", err
	}
	if _, err := run("dpkg-deb", "-x", bb, "bb"); err != nil {
		return "", err
	}
	stage := filepath.Join(tmp, "kernel")
	os.MkdirAll(stage, 0o755)
	if err := copyTo(filepath.Join(tmp, "bb", "bin", "busybox"), filepath.Join(stage, "busybox")); err != nil {
		return "", err
	}
	ks, _ := filepath.Glob(filepath.Join(tmp, "x", "boot", "vmlinuz-*"))
	if len(ks) != 1 {
		return "", fmt.Errorf("%s: want one vmlinuz, found %d", pkg, len(ks))
	}
	if err := copyTo(ks[0], filepath.Join(stage, "vmlinuz")); err != nil {
		return "", err
	}
	for _, m := range modules {
		var found []string
		for _, under := range []string{"", "*", "*/*"} {
			if found, _ = filepath.Glob(filepath.Join(tmp, "x", "lib", "modules", "*", "kernel", "*", under, m+".ko*")); len(found) > 0 {
				break
			}
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

// complete says whether dir holds the kernel and every module (a cache
// from before a module was added is fetched again).
func complete(dir string) bool {
	for _, name := range append([]string{"vmlinuz", "busybox"}, modulesFiles()...) {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

func modulesFiles() []string {
	files := make([]string, len(modules))
	for i, m := range modules {
		files[i] = m + ".ko"
	}
	return files
}

func copyTo(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// initScript mounts the ext4 root and switches to it.
var initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ` + strings.Join(modules, " ") + `; do
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
ip link set lo up
# The services tree (ServicesTarball) has a systemctl for the agent.
if [ -x /bin/systemctl ]; then mkdir -p /run/systemd/system /run/fake-systemd; fi
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
	"ip", "sed", "kill", "tail", "wc", "grep",
}

// fakeSystemctl is what emu-agent asks of systemd, for a test stack's
// services (ServicesTarball): start runs the unit's ExecStart= line in the
// background with its output in /run/fake-systemd/UNIT.log; stop ends it;
// is-failed is a started service whose process is gone; poweroff stops
// them all and powers off. Units' Environment=, User= and Restart= are not
// honoured: the test stacks do not need them. PID 1 here is a shell that
// reaps no orphan, so an ended service is a zombie: "alive" reads its state.
const fakeSystemctl = `#!/bin/sh
state=/run/fake-systemd
pid() { cat $state/$1.pid 2>/dev/null; }
alive() {
	p=$(pid $1)
	[ -n "$p" ] && [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status
}
start() {
	alive $1 && return 0
	cmd=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/$1)
	[ -n "$cmd" ] || { echo "systemctl: $1: no ExecStart=" >&2; return 1; }
	( eval "exec $cmd" ) >>$state/$1.log 2>&1 </dev/null &
	echo $! >$state/$1.pid
}
stop() {
	p=$(pid $1)
	[ -n "$p" ] || return 0
	kill $p 2>/dev/null
	i=0
	while alive $1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	alive $1 && kill -9 $p
	rm -f $state/$1.pid
}
set -- $(for a in "$@"; do case $a in --*) ;; *) echo $a ;; esac; done)
case $1 in
start) start $2 ;;
stop) stop $2 ;;
is-failed) [ -n "$(pid $2)" ] && ! alive $2 ;;
poweroff)
	for f in $state/*.pid; do [ -e "$f" ] && stop $(basename $f .pid); done
	sync
	poweroff -f ;;
*) echo "systemctl: $1: not in the test guest's systemctl" >&2; exit 1 ;;
esac
`

// fakeJournalctl prints a test service's output (see fakeSystemctl): -u
// UNIT, -n LINES, --show-cursor and --after-cursor as line numbers.
const fakeJournalctl = `#!/bin/sh
unit= n=10 after= cursor=
while [ $# -gt 0 ]; do
	case $1 in
	-u) unit=$2; shift ;;
	-n) n=$2; shift ;;
	--after-cursor) after=$2; shift ;;
	--show-cursor) cursor=1 ;;
	esac
	shift
done
log=/run/fake-systemd/$unit.log
[ -f $log ] || exit 0
if [ -n "$after" ]; then tail -n +$((after+1)) $log | head -n $n; else tail -n $n $log; fi
[ -n "$cursor" ] && echo "-- cursor: $(wc -l <$log)"
exit 0
`

var (
	guestBinsMu sync.Mutex
	guestBins   = map[string]guestBin{}
)

type guestBin struct {
	path string
	err  error
}

// Agent builds emu-agent (static, linux/amd64) once per test binary and
// returns its path.
func Agent(t testing.TB) string {
	t.Helper()
	return AgentFor(t, "amd64")
}

// AgentFor builds emu-agent for linux/arch once per test binary.
func AgentFor(t testing.TB, arch string) string {
	t.Helper()
	return guestBinary(t, "github.com/emu-dev/emu/cmd/emu-agent", arch)
}

// EchoServer builds the test service echoserver (static, for the guest)
// once per test binary and returns its path: `echoserver ADDR:PORT` sends
// back what each connection sends.
func EchoServer(t testing.TB) string {
	t.Helper()
	return guestBinary(t, "github.com/emu-dev/emu/internal/vmtest/echoserver", "amd64")
}

// guestBinary builds pkg as a static linux/arch program, once per test
// binary, in a new temporary directory.
func guestBinary(t testing.TB, pkg, arch string) string {
	t.Helper()
	guestBinsMu.Lock()
	defer guestBinsMu.Unlock()
	key := pkg + "@" + arch
	b, ok := guestBins[key]
	if !ok {
		b.path, b.err = buildGuest(pkg, arch)
		guestBins[key] = b
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func buildGuest(pkg, arch string) (string, error) {
	dir, err := os.MkdirTemp("", "emu-guest-bin-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-buildvcs=false", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s for linux/%s: %w: %s", pkg, arch, err, b)
	}
	return out, nil
}

// BaseTarball writes the tiny guest's base tree as a .tar.zst in dir and
// returns its path: busybox, an init that runs the agent, and /boot with the
// kernel and an initramfs (the names the build looks for).
func BaseTarball(t testing.TB, dir string) string {
	t.Helper()
	return baseTarball(t, dir, "amd64", false)
}

// BaseTarballFor is BaseTarball for a guest of arch (amd64, arm64).
func BaseTarballFor(t testing.TB, dir, arch string) string {
	t.Helper()
	return baseTarball(t, dir, arch, false)
}

// ServicesTarball is BaseTarball with a stand-in for systemd (a systemctl
// and a journalctl of a few lines of shell), so a test stack's `run`
// services start, stop and log, and the agent sets up the runtime config
// and the network as in a real image.
func ServicesTarball(t testing.TB, dir string) string {
	t.Helper()
	return baseTarball(t, dir, "amd64", true)
}

func baseTarball(t testing.TB, dir, arch string, services bool) string {
	t.Helper()
	kdir := KernelFor(t, arch)
	busybox, err := os.ReadFile(filepath.Join(kdir, "busybox"))
	if err != nil {
		t.Fatal(err)
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
	if services {
		dirEntry("./etc/systemd")
		file("./bin/systemctl", 0o755, []byte(fakeSystemctl))
		file("./bin/journalctl", 0o755, []byte(fakeJournalctl))
	}
	file("./boot/vmlinuz-test", 0o644, kernel)
	file("./boot/initrd.img-test", 0o644, initrd)
	file("./etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	file("./etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(dir, "tiny-base-"+arch+".tar")
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
