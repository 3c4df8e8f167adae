package qemu

import (
	"bufio"
	"context"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/*.args")

var linuxAMD64 = Host{OS: "linux", Arch: "amd64"}

func baseConfig(arch string, accel Accel) Config {
	return Config{
		Arch:      arch,
		Accel:     accel,
		CPUs:      2,
		Memory:    2 << 30,
		Kernel:    "/b/vmlinuz",
		Initrd:    "/b/initrd.img",
		Append:    "console=ttyS0 root=/dev/vda rw panic=-1",
		Drives:    []Drive{{Path: "/i/overlay.qcow2", Format: "qcow2", Discard: true}},
		SerialLog: "/i/serial.log",
		Agent:     Socket{Path: "/i/agent.sock"},
		Name:      "emu-demo",
		NoReboot:  true,
	}
}

func TestArgsGolden(t *testing.T) {
	fwd := baseConfig("amd64", TCG)
	fwd.Forwards = []proto.Forward{
		{Service: "api", Name: "http", Host: 26701, Guest: 8080},
		{Service: "db", Name: "sql", Host: 5432, Guest: 5432},
	}

	qmpfd := baseConfig("amd64", TCG)
	qmpfd.Agent = Socket{Path: "/i/agent.sock", FD: 4} // FD wins over Path
	qmpfd.QMP = Socket{FD: 3}
	qmpfd.PIDFile = "/i/qemu.pid"
	qmpfd.Drives = []Drive{
		{Path: "/b/disk,1.qcow2", Format: "qcow2", ReadOnly: true, Serial: "base"},
		{Path: "/i/scratch.raw", Format: "raw", Discard: true, Cache: "unsafe", Serial: "scratch"},
	}
	qmpfd.ExtraArgs = []string{"-S"}

	arm := baseConfig("arm64", TCG)
	arm.Append = "console=ttyAMA0 root=/dev/vda rw"

	hvf := baseConfig("arm64", HVF)
	hvf.Append = arm.Append
	hvf.QMP = Socket{Path: "/i/qmp.sock"}

	minimal := Config{Arch: "amd64", Accel: TCG, CPUs: 1, Memory: 100*mib + 1, Kernel: "/k"}

	for _, tc := range []struct {
		name string
		cfg  Config
		host Host
	}{
		{"tcg-amd64", baseConfig("amd64", TCG), linuxAMD64},
		{"kvm-amd64", baseConfig("amd64", KVM), linuxAMD64},
		{"hvf-arm64-darwin", hvf, Host{OS: "darwin", Arch: "arm64"}},
		{"tcg-arm64-on-amd64", arm, linuxAMD64},
		{"forwards", fwd, linuxAMD64},
		{"qmp-fd-agent", qmpfd, linuxAMD64},
		{"minimal", minimal, linuxAMD64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv, err := Args(tc.cfg, tc.host)
			if err != nil {
				t.Fatalf("Args: %v", err)
			}
			got := strings.Join(argv, "\n") + "\n"
			path := filepath.Join("testdata", tc.name+".args")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/qemu -update)", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s (run with -update if intended)\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

func TestArgsErrors(t *testing.T) {
	ok := baseConfig("amd64", TCG)
	with := func(f func(*Config)) Config { c := ok; f(&c); return c }
	for _, tc := range []struct {
		name string
		cfg  Config
		host Host
		want []string // substrings, all must appear
	}{
		{"missing kernel", with(func(c *Config) { c.Kernel = "" }), linuxAMD64, []string{"kernel: missing"}},
		{"bad arch", with(func(c *Config) { c.Arch = "riscv64" }), linuxAMD64, []string{`unsupported guest architecture "riscv64"`}},
		{"hvf on linux", with(func(c *Config) { c.Accel = HVF }), linuxAMD64, []string{"hvf: needs a macOS host"}},
		{"kvm on darwin", with(func(c *Config) { c.Accel = KVM }), Host{OS: "darwin", Arch: "amd64"}, []string{"kvm: needs a Linux host"}},
		{"kvm arch mismatch", with(func(c *Config) { c.Accel = KVM; c.Arch = "arm64" }), linuxAMD64, []string{"only guests of the host's architecture (amd64), not arm64"}},
		{"hvf arch mismatch", with(func(c *Config) { c.Accel = HVF }), Host{OS: "darwin", Arch: "arm64"}, []string{"hvf: runs only guests"}},
		{"unknown accel", with(func(c *Config) { c.Accel = "xen" }), linuxAMD64, []string{`accel "xen": unknown`}},
		{"no accel", with(func(c *Config) { c.Accel = "" }), linuxAMD64, []string{"accel: missing"}},
		{"no cpus", with(func(c *Config) { c.CPUs = 0 }), linuxAMD64, []string{"cpus: 0"}},
		{"little memory", with(func(c *Config) { c.Memory = 1 << 20 }), linuxAMD64, []string{"at least 64 MiB"}},
		{"bad drive", with(func(c *Config) { c.Drives = []Drive{{Format: "vmdk", Cache: "fast", Serial: "a,b"}} }), linuxAMD64,
			[]string{"drives[0]: missing path", `format "vmdk"`, `cache "fast"`, "must not contain commas"}},
		{"stdio fd", with(func(c *Config) { c.QMP = Socket{FD: 1} }), linuxAMD64, []string{"qmp: fd 1 is stdin"}},
		{"shared fd", with(func(c *Config) { c.QMP = Socket{FD: 3}; c.Agent = Socket{FD: 3} }), linuxAMD64, []string{"share fd 3"}},
		{"bad forwards", with(func(c *Config) {
			c.Forwards = []proto.Forward{{Host: 0, Guest: 70000}, {Host: 80, Guest: 80}, {Host: 80, Guest: 81}}
		}), linuxAMD64, []string{"host port 0 out of range", "guest port 70000", "host port 80 forwarded twice"}},
		{"several at once", Config{Arch: "amd64", Accel: TCG}, linuxAMD64, []string{"cpus", "memory", "kernel"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv, err := Args(tc.cfg, tc.host)
			if err == nil {
				t.Fatalf("Args: no error, argv %q", argv)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}
}

func TestBinary(t *testing.T) {
	for arch, want := range map[string]string{"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"} {
		if got, err := Binary(arch); got != want || err != nil {
			t.Errorf("Binary(%q) = %q, %v; want %q", arch, got, err, want)
		}
	}
	if _, err := Binary("386"); err == nil {
		t.Error("Binary(386): no error")
	}
}

// TestArgsBootsWithQEMU checks that the installed QEMU accepts every argument
// form we emit, including listening unix sockets passed as fd=N: it starts
// QEMU paused (-S) and reads the QMP greeting through the inherited socket.
func TestArgsBootsWithQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "disk.raw"} {
		if err := os.WriteFile(filepath.Join(dir, f), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listen := func(name string) (*net.UnixListener, *os.File) {
		t.Helper()
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return l, f
	}
	_, qmpFile := listen("qmp.sock")
	_, agentFile := listen("agent.sock")

	cfg := Config{
		Arch: "amd64", Accel: TCG, CPUs: 1, Memory: 128 * mib,
		Kernel:    filepath.Join(dir, "vmlinuz"),
		Append:    "console=ttyS0",
		Drives:    []Drive{{Path: filepath.Join(dir, "disk.raw"), Format: "raw", Discard: true, Serial: "d0"}},
		SerialLog: filepath.Join(dir, "serial.log"),
		QMP:       Socket{FD: 3},
		Agent:     Socket{FD: 4},
		Forwards:  []proto.Forward{{Host: freePort(t), Guest: 80}},
		Name:      "emu-argtest",
		PIDFile:   filepath.Join(dir, "qemu.pid"),
		NoReboot:  true,
		ExtraArgs: []string{"-S"}, // paused: the bogus kernel is never run
	}
	argv, err := Args(cfg, linuxAMD64)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.ExtraFiles = []*os.File{qmpFile, agentFile} // fd 3, fd 4
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()

	c, err := net.Dial("unix", filepath.Join(dir, "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	greeting := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c).ReadString('\n')
		greeting <- line
	}()
	select {
	case line := <-greeting:
		if !strings.Contains(line, `"QMP"`) {
			t.Fatalf("QMP greeting %q; qemu stderr: %s", line, stderr.String())
		}
	case err := <-done:
		done <- err
		t.Fatalf("qemu exited: %v; stderr: %s", err, stderr.String())
	}
	if _, err := os.Stat(cfg.PIDFile); err != nil {
		t.Errorf("pid file: %v", err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestKernelArgsTSC(t *testing.T) {
	for _, tc := range []struct {
		name   string
		arch   string
		accel  Accel
		append string
		want   string
	}{
		{"tcg amd64 gets it", "amd64", TCG, "console=ttyS0 panic=-1", "console=ttyS0 panic=-1 tsc=unstable"},
		{"empty command line", "amd64", TCG, "", "tsc=unstable"},
		{"the caller's tsc= wins", "amd64", TCG, "console=ttyS0 tsc=reliable", "console=ttyS0 tsc=reliable"},
		{"kvm keeps the tsc", "amd64", KVM, "console=ttyS0", "console=ttyS0"},
		{"arm64 has no tsc", "arm64", TCG, "console=ttyAMA0", "console=ttyAMA0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := kernelArgs(Config{Arch: tc.arch, Accel: tc.accel, Kernel: "/k", Append: tc.append})
			if got != tc.want {
				t.Errorf("kernelArgs = %q, want %q", got, tc.want)
			}
		})
	}
	if got := kernelArgs(Config{Arch: "amd64", Accel: TCG}); got != "" {
		t.Errorf("no kernel: kernelArgs = %q, want none (firmware boots)", got)
	}
}

func TestAccelArg(t *testing.T) {
	for _, tc := range []struct {
		accel  Accel
		tbSize int
		want   string
	}{
		{TCG, 0, "tcg,tb-size=256"},
		{TCG, 1024, "tcg,tb-size=1024"},
		{TCG, -1, "tcg"},
		{KVM, 0, "kvm"},
		{HVF, 512, "hvf"},
	} {
		if got := accelArg(Config{Accel: tc.accel, TBSize: tc.tbSize}); got != tc.want {
			t.Errorf("accelArg(%s, %d) = %q, want %q", tc.accel, tc.tbSize, got, tc.want)
		}
	}
}
