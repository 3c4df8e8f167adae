package agentbin

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/vmtest"
)

func none(string) ([]byte, bool) { return nil, false }

// Real agents pass the check for their own architecture only; a
// dynamically linked program and a script do not pass.
func TestCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent for both architectures")
	}
	for _, arch := range Arches {
		p := vmtest.AgentFor(t, arch)
		if err := Check(p, arch); err != nil {
			t.Errorf("the %s agent: %v", arch, err)
		}
		other := "arm64"
		if arch == "arm64" {
			other = "amd64"
		}
		if err := Check(p, other); err == nil || !strings.Contains(err.Error(), "the guest is "+other) {
			t.Errorf("the %s agent checked as %s: %v", arch, other, err)
		}
	}
	if err := Check("/bin/sh", "amd64"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("/bin/sh: %v, want dynamically linked", err)
	}
	script := filepath.Join(t.TempDir(), "emu-agent")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	if err := Check(script, "amd64"); err == nil || !strings.Contains(err.Error(), "not an ELF program") {
		t.Errorf("a script: %v", err)
	}
}

// Find: EMU_AGENT first (and checked), then the built-in agent (written
// out once, by content), then emu-agent-linux-ARCH or, for amd64, the old
// emu-agent beside emu; nothing found names where it looked.
func TestFind(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent for both architectures")
	}
	amd, arm := vmtest.AgentFor(t, "amd64"), vmtest.AgentFor(t, "arm64")
	cache := t.TempDir()
	// EMU_AGENT for another architecture: passed over for the built-in
	// agent, named when there is none.
	if _, err := find("amd64", Options{Env: arm, Cache: cache}, none); err == nil || !strings.Contains(err.Error(), "EMU_AGENT") {
		t.Errorf("EMU_AGENT of the wrong architecture and nothing else: %v", err)
	}
	amdBytes, _ := os.ReadFile(amd)
	if p, err := find("amd64", Options{Env: arm, Cache: cache}, func(a string) ([]byte, bool) { return amdBytes, a == "amd64" }); err != nil || !strings.HasPrefix(p, cache) {
		t.Errorf("EMU_AGENT for arm64 and a built-in amd64 agent: %q, %v", p, err)
	}
	if p, err := find("amd64", Options{Env: amd, Cache: cache}, none); err != nil || p != amd {
		t.Errorf("EMU_AGENT = %q, %v", p, err)
	}

	armBytes, err := os.ReadFile(arm)
	if err != nil {
		t.Fatal(err)
	}
	built := func(arch string) ([]byte, bool) { return armBytes, arch == "arm64" }
	p, err := find("arm64", Options{Cache: cache}, built)
	if err != nil || !strings.HasPrefix(p, cache) {
		t.Fatalf("built-in arm64 agent = %q, %v", p, err)
	}
	if err := Check(p, "arm64"); err != nil {
		t.Errorf("the written-out agent: %v", err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("written-out agent mode %v", fi.Mode())
	}
	if p2, err := find("arm64", Options{Cache: cache}, built); err != nil || p2 != p {
		t.Errorf("second lookup = %q, %v; want the same file %q", p2, err, p)
	}
	// A damaged copy (same size, one byte changed) is written again.
	damaged := append([]byte(nil), armBytes...)
	damaged[len(damaged)/2] ^= 0xff
	os.WriteFile(p, damaged, 0o755)
	if p2, err := find("arm64", Options{Cache: cache}, built); err != nil || p2 != p {
		t.Errorf("lookup after damage = %q, %v", p2, err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, armBytes) {
		t.Error("a damaged written-out agent was used as it was")
	}

	exeDir := t.TempDir()
	exe := filepath.Join(exeDir, "emu")
	_, err = find("arm64", Options{Exe: exe, Cache: cache}, none)
	var nf *NotFoundError
	if !errors.As(err, &nf) || len(nf.Looked) != 1 || nf.Looked[0] != filepath.Join(exeDir, "emu-agent-linux-arm64") {
		t.Errorf("nothing beside emu: %v", err)
	}
	b, _ := os.ReadFile(amd)
	os.WriteFile(filepath.Join(exeDir, "emu-agent"), b, 0o755)
	if p, err := find("amd64", Options{Exe: exe, Cache: cache}, none); err != nil || p != filepath.Join(exeDir, "emu-agent") {
		t.Errorf("old emu-agent beside emu = %q, %v", p, err)
	}
	os.WriteFile(filepath.Join(exeDir, "emu-agent-linux-arm64"), b, 0o755)
	if _, err := find("arm64", Options{Exe: exe, Cache: cache}, none); err == nil || !strings.Contains(err.Error(), "beside emu") {
		t.Errorf("an amd64 program named emu-agent-linux-arm64: %v", err)
	}
	if _, err := find("riscv64", Options{}, none); err == nil {
		t.Error("riscv64 found an agent")
	}
}

// In a build with the agents built in (make: -tags embedagents), both are
// there and each is a static Linux program of its architecture.
func TestEmbedded(t *testing.T) {
	have := Embedded()
	if len(have) == 0 {
		t.Skip("this test binary carries no agents (built without -tags embedagents)")
	}
	if len(have) != len(Arches) {
		t.Fatalf("built in: %v, want %v", have, Arches)
	}
	for _, arch := range Arches {
		p, err := Find(arch, Options{Cache: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(p, arch); err != nil {
			t.Errorf("built-in %s agent: %v", arch, err)
		}
	}
}
