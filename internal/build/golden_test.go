package build

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/golden"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// demoStack is examples/demo as the build reads it, beside a stand-in
// for the API binary (make demo-api builds the real one).
func demoStack(t *testing.T) *spec.Stack {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", "demo", "emu.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin", "linux-amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "linux-amd64", "demo-api"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "emu.yaml")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := spec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The contracts a build hands to others: QEMU's command line for the
// provisioning boot, the request the agent runs, and manifest.json.
func TestGoldenProvision(t *testing.T) {
	b := &builder{
		opts:   Options{Stack: demoStack(t), Accel: accel.Choice{Accel: qemu.TCG, TimeoutScale: accel.TCGTimeoutScale}},
		work:   "/state/work/demo-1",
		logs:   "/state/logs/build/demo/20261201T000000Z-1",
		kernel: "/state/work/demo-1/vmlinuz",
		initrd: "/state/work/demo-1/initrd.img",
	}
	argv, err := machine.Args(b.provisionConfig(), qemu.Host{OS: "linux", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "provision.args", golden.Lines(argv))

	req, err := json.MarshalIndent(b.request(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "provision-request.json", append(req, '\n'))
}

func TestGoldenManifest(t *testing.T) {
	var m bundle.Manifest
	describeStack(&m, demoStack(t))
	m.InputHash, m.RootfsKey, m.EmuVersion = "sha256:input", "rootfs-key", "v1.2.3"
	m.Created = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	m.Files = map[string]bundle.FileRecord{
		store.BundleDisk:   {SHA256: "d1", Size: 98 << 20},
		store.BundleKernel: {SHA256: "k1", Size: 7 << 20},
		store.BundleInitrd: {SHA256: "i1", Size: 20 << 20},
		store.BundleLog:    {SHA256: "l1", Size: 4096},
	}
	for _, name := range StagesFor(demoStack(t)) {
		m.Stages = append(m.Stages, bundle.StageRecord{Name: name, Duration: bundle.Millis(1500 * time.Millisecond), Size: 1 << 20})
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "manifest.json", append(b, '\n'))
}
