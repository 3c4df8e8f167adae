package accel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/qemu"
)

// bootSector is a 512-byte x86 boot sector: mov al,0x31; out 0xf4,al; hlt;
// jmp $-1 (back to hlt). With isa-debug-exit at port 0xf4 the write makes
// QEMU exit with status (0x31<<1)|1 = 99, so that status means the guest ran.
var bootSector = func() []byte {
	b := make([]byte, 512)
	copy(b, []byte{0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD})
	b[510], b[511] = 0x55, 0xAA
	return b
}()

// probeExitCode is QEMU's exit status when the probe guest ran to its end.
const probeExitCode = 99

// arm64Probe is the arm64 probe guest: a raw image QEMU's virt machine
// loads with -kernel (no Image header: loaded at RAM + 0x80000 and entered
// at EL1). It writes "OK\n" to the PL011 UART at 0x09000000, then asks PSCI
// for SYSTEM_OFF through HVC (the virt machine's conduit, kept by KVM), so
// QEMU exits 0 with "OK" on the serial console:
//
//	movz x1, #0x0900, lsl #16   // the UART's data register
//	mov  w2, #'O'; str w2, [x1]
//	mov  w2, #'K'; str w2, [x1]
//	mov  w2, #'\n'; str w2, [x1]
//	movz x0, #0x8400, lsl #16
//	movk x0, #0x0008            // PSCI 0.2 SYSTEM_OFF
//	hvc  #0
//	1: wfi; b 1b
var arm64Probe = func() []byte {
	var b []byte
	for _, ins := range []uint32{
		0xD2A12001,
		0x528009E2, 0xB9000022,
		0x52800962, 0xB9000022,
		0x52800142, 0xB9000022,
		0xD2B08000, 0xF2800100,
		0xD4000002,
		0xD503207F, 0x17FFFFFF,
	} {
		b = binary.LittleEndian.AppendUint32(b, ins)
	}
	return b
}()

// arm64ProbeSays is what the arm64 probe guest writes when it ran.
const arm64ProbeSays = "OK\n"

// ProbeArgs is the probe guest's argv (without the binary) for accel, with
// the boot sector at img.
//
// The CPU model is the one qemu.Args uses for real guests: on our machines
// "-accel kvm" with the default CPU model runs this probe fine (in ~2.8 s,
// mostly KVM setup), but "-cpu host" aborts at once with "failed to set MSR
// 0x10a", which is how real guests die there. The machine is "pc", not
// "q35": with -nodefaults, SeaBIOS on q35 does not boot the sector from an
// IDE or virtio disk (QEMU 7.2), while on pc it does.
func ProbeArgs(accel qemu.Accel, img string) []string {
	cpu := "host"
	if accel == qemu.TCG {
		cpu = "max"
	}
	return []string{
		"-machine", "pc", "-accel", string(accel), "-cpu", cpu,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-m", "16",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-drive", "file=" + strings.ReplaceAll(img, ",", ",,") + ",format=raw,if=ide",
	}
}

// ProbeArgsArm64 is the arm64 probe guest's argv (without the binary) for
// accel, with the image at img and the serial console written to serial.
func ProbeArgsArm64(accel qemu.Accel, img, serial string) []string {
	cpu := "host"
	if accel == qemu.TCG {
		cpu = "max"
	}
	return []string{
		"-machine", "virt", "-accel", string(accel), "-cpu", cpu,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-m", "64",
		"-kernel", img,
		"-serial", "file:" + serial,
	}
}

// Probe boots the probe guest for a guest of arch (amd64: an x86 boot
// sector; arm64: arm64Probe on the virt machine) with the QEMU binary bin
// under accel. It returns nil when the guest ran to completion, ctx.Err()
// when ctx ended first, and otherwise an error that carries the exit
// status and the last line QEMU wrote to stderr. The QEMU process is
// always killed and reaped before Probe returns.
func Probe(ctx context.Context, arch, bin string, accel qemu.Accel) error {
	dir, err := os.MkdirTemp("", "emu-accel-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "boot.img")
	serial := filepath.Join(dir, "serial.log")
	image, args := bootSector, ProbeArgs(accel, img)
	if arch == "arm64" {
		image, args = arm64Probe, ProbeArgsArm64(accel, img, serial)
	}
	if err := os.WriteFile(img, image, 0o600); err != nil {
		return err
	}

	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *exec.ExitError
	if arch == "arm64" {
		said, _ := os.ReadFile(serial)
		if err == nil && string(said) == arm64ProbeSays {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("exit status 0, the guest wrote %q, want %q", said, arm64ProbeSays)
		}
	} else if errors.As(err, &ee) && ee.ExitCode() == probeExitCode {
		return nil
	}
	if err == nil {
		err = errors.New("exit status 0")
	}
	if last := lastLine(stderr.String()); last != "" {
		return fmt.Errorf("%w: %s", err, last)
	}
	return err
}

// lastLine picks the line of QEMU's stderr that says most: the first one
// with "error" in it, else the last.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	s = lines[len(lines)-1]
	for _, l := range lines {
		if strings.Contains(l, "error") {
			s = l
			break
		}
	}
	s = strings.TrimPrefix(strings.TrimPrefix(s, "qemu-system-x86_64: "), "qemu-system-aarch64: ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
