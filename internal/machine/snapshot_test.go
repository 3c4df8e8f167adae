package machine

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
)

// fakeQEMU is a script that answers --version as QEMU does.
func fakeQEMU(t *testing.T, version string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'QEMU emulator version "+version+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func keyConfig(bin string) Config {
	return Config{
		Name: "emu-demo", Arch: "amd64", VM: spec.VM{CPUs: 2, Memory: 2 << 30},
		Accel:  accel.Choice{Accel: qemu.TCG},
		Kernel: "/b/vmlinuz", Initrd: "/b/initrd.img", Cmdline: "console=ttyS0",
		Drive:  qemu.Drive{Path: "/s/instances/demo/overlay.qcow2", Format: "qcow2", Discard: true},
		Serial: "/s/instances/demo/serial.log", AgentSocket: "/s/a.sock", QMPSocket: "/s/q.sock",
		Forwards: []proto.Forward{
			{Service: "api", Name: "http", Guest: 8080, Host: 26701},
			{Service: "postgres", Name: "sql", Guest: 5432, Host: 26702},
			{Service: "valkey", Name: "resp", Guest: 6379, Host: 26703},
		},
		FWCfg: []qemu.FWCfgFile{{Name: proto.RuntimeFWCfg, Path: "/s/instances/demo/runtime.json"}},
		QEMU:  bin,
	}
}

func TestStateKeyIgnoresWhatChangesBetweenStarts(t *testing.T) {
	ctx := context.Background()
	bin := fakeQEMU(t, "7.2.22")
	base, err := Key(ctx, keyConfig(bin), "sum")
	if err != nil {
		t.Fatal(err)
	}
	// Another instance of the same image, on other host ports.
	other := keyConfig(bin)
	other.Name, other.Drive.Path, other.Serial = "emu-demo2", "/s/instances/demo2/overlay.qcow2", "/s/instances/demo2/serial.log"
	other.FWCfg = []qemu.FWCfgFile{{Name: proto.RuntimeFWCfg, Path: "/s/instances/demo2/runtime.json"}}
	for i := range other.Forwards {
		other.Forwards[i].Host += 100
	}
	k, err := Key(ctx, other, "sum")
	if err != nil {
		t.Fatal(err)
	}
	if m := base.Mismatch(k); m != "" {
		t.Errorf("a state does not fit another start of the same machine: %s", m)
	}

	for _, tc := range []struct {
		name   string
		change func(*Config, *string)
		want   string
	}{
		{"memory", func(c *Config, _ *string) { c.VM.Memory = 4 << 30 }, `the machine changed since the state was saved (qemu argument "2048", now "4096")`},
		{"cpus", func(c *Config, _ *string) { c.VM.CPUs = 4 }, "the machine changed"},
		{"accelerator", func(c *Config, _ *string) { c.Accel = accel.Choice{Accel: qemu.KVM} }, "the machine changed"},
		{"a guest port", func(c *Config, _ *string) { c.Forwards[0].Guest = 9090 }, "the machine changed"},
		{"the image", func(_ *Config, sum *string) { *sum = "other" }, "the image changed"},
		{"qemu", func(c *Config, _ *string) { c.QEMU = fakeQEMU(t, "10.0.2") }, "qemu changed"},
	} {
		cfg, sum := keyConfig(bin), "sum"
		tc.change(&cfg, &sum)
		k, err := Key(ctx, cfg, sum)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if m := base.Mismatch(k); !strings.Contains(m, tc.want) {
			t.Errorf("%s changed: mismatch %q, want %q", tc.name, m, tc.want)
		}
	}
}
