// Package qemu builds QEMU command lines and runs QEMU.
//
// args.go is pure: Args turns a Config and a Host into argv and never touches
// the machine. Probing the host (which accelerator works) lives in
// internal/accel; starting the process lives in process.go.
package qemu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/proto"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	TCG Accel = "tcg"
	KVM Accel = "kvm"
	HVF Accel = "hvf"
)

// AgentPortName is the virtserialport name the guest agent opens. In the
// guest it shows up in /sys/class/virtio-ports/*/name.
const AgentPortName = "emu.agent"

// Drive is one virtio-blk disk.
type Drive struct {
	Path     string
	Format   string // "raw" or "qcow2"
	ReadOnly bool
	// Discard passes guest TRIM through and turns zero writes into holes
	// (discard=unmap,detect-zeroes=unmap): what keeps slimmed images small.
	Discard bool
	Serial  string // optional; the guest sees it in /dev/disk/by-id
	// Cache is QEMU's cache mode; "" means writeback. "unsafe" is fine for
	// throwaway build disks, never for a disk whose data must survive.
	Cache string
	// PauseWhenFull pauses the guest when a write fails because the host
	// filesystem is full (werror=enospc): nothing is lost, and `cont`
	// retries the write once there is room. Otherwise the guest sees the
	// error (werror=report): a build's bake step fails at once instead of
	// hanging paused. Read errors are always reported to the guest.
	PauseWhenFull bool
}

// Socket is a unix socket QEMU listens on (server=on,wait=off).
//
// When FD > 0 the caller has already created the listening socket and passes
// it to QEMU as that descriptor (exec.Cmd.ExtraFiles[i] is fd 3+i); the argv
// then says fd=N and Path is ignored. This removes the race between starting
// QEMU and the socket appearing: the caller can connect before QEMU is even
// up, and the kernel queues the connection. Verified with QEMU 7.2.22
// (Debian 12): a listening unix socket passed as fd=3 with
// "-chardev socket,id=qmp0,fd=3,server=on,wait=off" accepts a client and
// sends the QMP greeting; TestArgsBootsWithQEMU checks it.
type Socket struct {
	Path string
	FD   int
}

func (s Socket) empty() bool { return s.Path == "" && s.FD <= 0 }

// Config is everything Args needs. See Args for the defaults.
type Config struct {
	Arch   string // guest architecture: "amd64" or "arm64"
	Accel  Accel
	CPUs   int
	Memory int64 // bytes; rounded up to whole MiB

	Kernel, Initrd, Append string

	Drives []Drive

	// SerialLog receives the serial console (the file is truncated at start).
	SerialLog string
	// Agent backs the virtserialport AgentPortName; empty means no agent port.
	Agent Socket
	// QMP is the QMP monitor socket; empty means no monitor.
	QMP Socket
	// Forwards enable user-mode networking with these host forwards; none
	// means no network device at all.
	Forwards []proto.Forward

	Name     string // -name
	PIDFile  string // optional -pidfile
	NoReboot bool   // -no-reboot: a guest reboot (or panic with panic=-1) ends QEMU

	// FWCfg passes files to the guest through fw_cfg (name -> host path);
	// the guest reads /sys/firmware/qemu_fw_cfg/by_name/NAME/raw.
	FWCfg []FWCfgFile

	// TBSize is TCG's translation cache in MiB: 0 means DefaultTBSize,
	// a negative value QEMU's own default. Other accelerators have none.
	TBSize int

	// Incoming makes QEMU wait for a migration stream before it runs the
	// guest (-incoming defer: the stream is handed over QMP later, see
	// qmp.Client.MigrateIncoming). A restored guest stays paused until
	// cont.
	Incoming bool

	// ExtraArgs are appended verbatim, last.
	ExtraArgs []string
}

// FWCfgFile is one fw_cfg item; names under "opt/" are free for guests.
type FWCfgFile struct {
	Name, Path string
}

// Host describes the machine QEMU runs on, in runtime.GOOS/GOARCH terms.
type Host struct {
	OS, Arch string
}

// Binary names the QEMU system emulator for a guest architecture.
func Binary(arch string) (string, error) {
	switch arch {
	case "amd64":
		return "qemu-system-x86_64", nil
	case "arm64":
		return "qemu-system-aarch64", nil
	}
	return "", fmt.Errorf("unsupported guest architecture %q (want amd64 or arm64)", arch)
}

const mib = 1 << 20

// tcgTSC is added to an amd64 guest's kernel command line under TCG. With
// two or more vCPUs, multi-threaded TCG races with the kernel patching its
// own code (an int3 first, then the new bytes): a vCPU that runs the site
// mid-patch dies with "Oops: int3". The hottest site is the sched_clock
// stability key in sched_clock_cpu, flipped about 2 s into boot ("sched_clock:
// Marking stable"). Marking the TSC unstable from the start means that key is
// never flipped; the guest keeps time with the HPET instead. bench/tsc
// measures both the crash rate and the cost.
const tcgTSC = "tsc=unstable"

// DefaultTBSize is TCG's translation cache in MiB. QEMU's default, 1 GiB
// on most hosts, filled about 785 MiB during the demo's boot (QEMU 7.2
// translates code again at each new virtual address); 256 MiB halved
// QEMU's peak RSS (1302 to 648 MiB) and was no slower to healthy, while
// 64 MiB cost 9 % (bench/tbsize).
const DefaultTBSize = 256

// accelArg is -accel's value: the accelerator and, under TCG, the size of
// its translation cache.
func accelArg(cfg Config) string {
	if cfg.Accel != TCG || cfg.TBSize < 0 {
		return string(cfg.Accel)
	}
	n := cfg.TBSize
	if n == 0 {
		n = DefaultTBSize
	}
	return string(cfg.Accel) + ",tb-size=" + strconv.Itoa(n)
}

// kernelArgs is cfg.Append with what the accelerator needs added; a tsc=
// the caller chose is kept.
func kernelArgs(cfg Config) string {
	a := cfg.Append
	if cfg.Kernel == "" || cfg.Accel != TCG || cfg.Arch != "amd64" {
		return a
	}
	for _, f := range strings.Fields(a) {
		if strings.HasPrefix(f, "tsc=") {
			return a
		}
	}
	return strings.TrimSpace(a + " " + tcgTSC)
}

// Args validates cfg against host and returns QEMU's argv without the binary.
// Every problem is reported at once, joined.
func Args(cfg Config, host Host) ([]string, error) {
	if err := Validate(cfg, host); err != nil {
		return nil, err
	}
	b := &builder{ids: map[string]int{}}

	b.add("-nodefaults", "-no-user-config", "-display", "none")
	if cfg.Name != "" {
		b.add("-name", escape(cfg.Name))
	}

	// Machine, accelerator, CPU.
	switch cfg.Arch {
	case "amd64":
		b.add("-machine", "q35")
	case "arm64":
		b.add("-machine", "virt")
	}
	b.add("-accel", accelArg(cfg))
	if cfg.Accel == TCG {
		b.add("-cpu", "max")
	} else {
		b.add("-cpu", "host")
	}
	b.add("-smp", strconv.Itoa(cfg.CPUs))
	b.add("-m", strconv.FormatInt((cfg.Memory+mib-1)/mib, 10))
	if cfg.NoReboot {
		b.add("-no-reboot")
	}

	// Boot.
	b.add("-kernel", cfg.Kernel)
	if cfg.Initrd != "" {
		b.add("-initrd", cfg.Initrd)
	}
	if a := kernelArgs(cfg); a != "" {
		b.add("-append", a)
	}

	for _, d := range cfg.Drives {
		b.drive(d)
	}

	// Guests block on entropy early under TCG without this.
	b.add("-device", "virtio-rng-pci,id="+b.id("rng"))

	if cfg.SerialLog != "" {
		id := b.id("serial")
		b.add("-chardev", "file,id="+id+",path="+escape(cfg.SerialLog))
		b.add("-serial", "chardev:"+id)
	}

	if !cfg.Agent.empty() {
		bus := b.id("vser")
		b.add("-device", "virtio-serial-pci,id="+bus)
		id := b.id("agent")
		b.add("-chardev", "socket,id="+id+","+socketOpt(cfg.Agent)+",server=on,wait=off")
		b.add("-device", "virtserialport,bus="+bus+".0,chardev="+id+",name="+AgentPortName)
	}

	if !cfg.QMP.empty() {
		id := b.id("qmp")
		b.add("-chardev", "socket,id="+id+","+socketOpt(cfg.QMP)+",server=on,wait=off")
		b.add("-mon", "chardev="+id+",mode=control")
	}

	if len(cfg.Forwards) == 0 {
		b.add("-nic", "none")
	} else {
		id := b.id("net")
		opt := "user,id=" + id
		for _, f := range cfg.Forwards {
			// Ports bind 127.0.0.1 only: the stack is for this host.
			opt += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", f.Host, f.Guest)
		}
		b.add("-netdev", opt)
		b.add("-device", "virtio-net-pci,netdev="+id)
	}

	for _, f := range cfg.FWCfg {
		b.add("-fw_cfg", "name="+escape(f.Name)+",file="+escape(f.Path))
	}
	if cfg.PIDFile != "" {
		b.add("-pidfile", cfg.PIDFile)
	}
	if cfg.Incoming {
		b.add("-incoming", "defer")
	}
	b.add(cfg.ExtraArgs...)
	return b.argv, nil
}

// Validate reports every problem with cfg on host, joined; nil when Args
// would succeed.
func Validate(cfg Config, host Host) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if _, err := Binary(cfg.Arch); err != nil {
		errs = append(errs, err)
	}
	if err := AccelPossible(cfg.Accel, cfg.Arch, host); err != nil {
		errs = append(errs, err)
	}
	if cfg.CPUs < 1 {
		bad("cpus: %d, want at least 1", cfg.CPUs)
	}
	if cfg.Memory < 64*mib {
		bad("memory: %d bytes, want at least 64 MiB", cfg.Memory)
	}
	if cfg.Kernel == "" {
		bad("kernel: missing (the path of the guest kernel image)")
	}
	for i, d := range cfg.Drives {
		if d.Path == "" {
			bad("drives[%d]: missing path", i)
		}
		if d.Format != "raw" && d.Format != "qcow2" {
			bad("drives[%d]: format %q, want raw or qcow2", i, d.Format)
		}
		switch d.Cache {
		case "", "writeback", "none", "writethrough", "directsync", "unsafe":
		default:
			bad("drives[%d]: cache %q, want writeback, none, writethrough, directsync or unsafe", i, d.Cache)
		}
		if strings.ContainsAny(d.Serial, ", ") {
			bad("drives[%d]: serial %q must not contain commas or spaces", i, d.Serial)
		}
	}
	for _, s := range []struct {
		name string
		Socket
	}{{"agent", cfg.Agent}, {"qmp", cfg.QMP}} {
		name := s.name
		if s.FD < 0 {
			bad("%s: fd %d is negative", name, s.FD)
		}
		if s.FD > 0 && s.FD < 3 {
			bad("%s: fd %d is stdin, stdout or stderr; pass the socket via ExtraFiles (fd 3 and up)", name, s.FD)
		}
	}
	if cfg.Agent.FD > 0 && cfg.Agent.FD == cfg.QMP.FD {
		bad("agent and qmp share fd %d", cfg.Agent.FD)
	}
	seen := map[string]bool{}
	for i, f := range cfg.Forwards {
		if f.Host < 1 || f.Host > 65535 {
			bad("forwards[%d]: host port %d out of range 1-65535", i, f.Host)
		}
		if f.Guest < 1 || f.Guest > 65535 {
			bad("forwards[%d]: guest port %d out of range 1-65535", i, f.Guest)
		}
		key := strconv.Itoa(f.Host)
		if seen[key] {
			bad("forwards[%d]: host port %s forwarded twice", i, key)
		}
		seen[key] = true
	}
	return errors.Join(errs...)
}

// AccelPossible reports whether accel can run a guest of arch on host at all;
// whether it actually works there is for internal/accel to probe.
func AccelPossible(accel Accel, arch string, host Host) error {
	switch accel {
	case TCG:
		return nil
	case KVM:
		if host.OS != "linux" {
			return fmt.Errorf("accel kvm: needs a Linux host, this is %s (use tcg)", host.OS)
		}
	case HVF:
		if host.OS != "darwin" {
			return fmt.Errorf("accel hvf: needs a macOS host, this is %s (use tcg)", host.OS)
		}
	case "":
		return errors.New("accel: missing (tcg, kvm or hvf)")
	default:
		return fmt.Errorf("accel %q: unknown (want tcg, kvm or hvf)", accel)
	}
	if arch != host.Arch {
		return fmt.Errorf("accel %s: runs only guests of the host's architecture (%s), not %s (use tcg)", accel, host.Arch, arch)
	}
	return nil
}

// builder collects argv and hands out device ids that never collide.
type builder struct {
	argv []string
	ids  map[string]int
}

func (b *builder) add(a ...string) { b.argv = append(b.argv, a...) }

// id returns prefix0, prefix1, ... in order of request.
func (b *builder) id(prefix string) string {
	n := b.ids[prefix]
	b.ids[prefix] = n + 1
	return prefix + strconv.Itoa(n)
}

func (b *builder) drive(d Drive) {
	id := b.id("drive")
	opt := "file=" + escape(d.Path) + ",if=none,id=" + id + ",format=" + d.Format
	if d.ReadOnly {
		opt += ",readonly=on"
	}
	if d.Discard {
		opt += ",discard=unmap,detect-zeroes=unmap"
	}
	cache := d.Cache
	if cache == "" {
		cache = "writeback"
	}
	opt += ",cache=" + cache
	if !d.ReadOnly {
		if d.PauseWhenFull {
			opt += ",werror=enospc"
		} else {
			opt += ",werror=report"
		}
	}
	opt += ",rerror=report"
	b.add("-drive", opt)
	dev := "virtio-blk-pci,drive=" + id + ",id=" + b.id("blk")
	if d.Discard {
		// QEMU's default granularity follows the host file (2 MiB seen
		// here): the guest then skips every freed range smaller than that,
		// and deleted files stay in the image. Block-sized: every free block
		// is discarded.
		dev += ",discard_granularity=4096"
	}
	if d.Serial != "" {
		dev += ",serial=" + d.Serial
	}
	b.add("-device", dev)
}

func socketOpt(s Socket) string {
	if s.FD > 0 {
		return "fd=" + strconv.Itoa(s.FD)
	}
	return "path=" + escape(s.Path)
}

// escape doubles commas, QEMU's quoting inside an option list.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
