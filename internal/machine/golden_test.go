package machine

import (
	"testing"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/golden"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
)

// The boot check's QEMU command line: the bundle's kernel and run-mode
// command line on a throwaway overlay, no QMP, its ports forwarded to free
// host ports with the runtime config that says so.
func TestGoldenVerifyArgs(t *testing.T) {
	man := bundle.Manifest{
		Name: "demo", Arch: "amd64",
		Cmdline: "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 emu.mode=run",
		VM:      spec.VM{CPUs: 2, Memory: 1 << 30, Disk: 4 << 30},
	}
	opts := VerifyOptions{Bundle: "/data/images/demo", Accel: accel.Choice{Accel: qemu.TCG, TimeoutScale: accel.TCGTimeoutScale}}
	fwds := []proto.Forward{{Service: "api", Name: "http", Guest: 8080, Host: 41234}}
	argv, err := Args(verifyConfig(opts, man, "/state/work/verify-1/overlay.qcow2", "/state/logs/verify", fwds, "/state/work/verify-1/runtime.json"),
		qemu.Host{OS: "linux", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "verify.args", golden.Lines(argv))
}
