package instance

import (
	"os"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/golden"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

var demoPorts = []proto.Forward{
	{Service: "api", Name: "http", Guest: 8080, Host: 26701},
	{Service: "postgres", Name: "sql", Guest: 5432, Host: 26702},
}

// emu up's QEMU command line: detached, its sockets and runtime config in
// the instance directory, its forwards on 127.0.0.1.
func TestGoldenUpArgs(t *testing.T) {
	o := UpOptions{
		Instance: store.At("/home/dev/.emu").Instance("demo"),
		Bundle:   "/home/dev/.emu/data/images/demo",
		Manifest: bundle.Manifest{
			Name: "demo", Arch: "amd64",
			Cmdline: "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 emu.mode=run",
			VM:      spec.VM{CPUs: 2, Memory: 1 << 30, Disk: 4 << 30},
		},
		Accel: accel.Choice{Accel: qemu.KVM, TimeoutScale: 1},
		Ports: demoPorts,
	}
	argv, err := machine.Args(bootConfig(o), qemu.Host{OS: "linux", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "up.args", golden.Lines(argv))
}

// instance.json, as up writes it and status, down and prune read it.
func TestGoldenInstanceJSON(t *testing.T) {
	inst := store.At(t.TempDir()).Instance("demo")
	if err := os.MkdirAll(inst.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	info := Info{
		Name: "demo", Bundle: "/home/dev/.emu/data/images/demo", DiskSHA256: "d1", Accel: "tcg", TimeoutScale: 8,
		Ports: demoPorts, Started: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), PID: 4242,
		Timings: machine.Timings{Start: 20 * time.Millisecond, Hello: 5 * time.Second, Services: 12 * time.Second, Ready: 17 * time.Second},
	}
	if err := writeInfo(inst, info); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(inst.State())
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "instance.json", b)
	back, err := ReadInfo(inst)
	if err != nil || back.PID != info.PID || len(back.Ports) != 2 || back.Timings != info.Timings {
		t.Errorf("ReadInfo = %+v, %v; want what was written", back, err)
	}
}
