// Package agentbin finds emu-agent, the guest agent, for a guest
// architecture. A release build of emu (make, make release) carries a
// static agent for linux/amd64 and one for linux/arm64 inside it; a
// development build may use EMU_AGENT or an agent beside the emu binary.
// Whatever is found is checked to be a static Linux program of the
// architecture the guest runs.
package agentbin

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/emu-dev/emu/internal/disk"
)

// Arches are the guest architectures emu has agents for.
var Arches = []string{"amd64", "arm64"}

// machines are the ELF machines of Arches.
var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// FileName is an agent's name beside emu and in a release archive:
// emu-agent-linux-amd64.
func FileName(arch string) string { return "emu-agent-linux-" + arch }

// Options says where to look.
type Options struct {
	// Env is EMU_AGENT: an explicit agent, used for its architecture.
	Env string
	// Exe is the emu binary, whose directory may hold agents.
	Exe string
	// Cache is where an embedded agent is written out (once per
	// content) for the build to copy into a guest.
	Cache string
}

// NotFoundError says no agent for Arch was found, and where emu looked.
type NotFoundError struct {
	Arch   string
	Looked []string
	// EnvErr is why EMU_AGENT was passed over (another architecture's).
	EnvErr error
}

func (e *NotFoundError) Error() string {
	msg := fmt.Sprintf("no guest agent for linux/%s: this emu has none built in, and none is at %v", e.Arch, e.Looked)
	if e.EnvErr != nil {
		msg += "; " + e.EnvErr.Error()
	}
	return msg
}

// ArchError is a program built for another architecture than the guest's.
type ArchError struct {
	Path      string
	Machine   elf.Machine
	GuestArch string
}

func (e *ArchError) Error() string {
	return fmt.Sprintf("check %s: a %s program, the guest is %s (%s)", e.Path, e.Machine, e.GuestArch, machines[e.GuestArch])
}

// Find returns the path of a checked emu-agent for arch: EMU_AGENT when it
// is one for arch, else the one built into emu, else emu-agent-linux-ARCH
// or (amd64 only, as older builds named it) emu-agent beside emu. An
// EMU_AGENT for another architecture is passed over (a build for both
// architectures uses it for its own), and named when nothing else is
// found.
func Find(arch string, o Options) (string, error) { return find(arch, o, embedded) }

func find(arch string, o Options, embedded func(string) ([]byte, bool)) (string, error) {
	if _, ok := machines[arch]; !ok {
		return "", fmt.Errorf("guest agent: unsupported architecture %q (want amd64 or arm64)", arch)
	}
	var otherArch error
	if o.Env != "" {
		err := Check(o.Env, arch)
		if err == nil {
			return o.Env, nil
		}
		if !errors.As(err, new(*ArchError)) {
			return "", fmt.Errorf("guest agent from EMU_AGENT: %w", err)
		}
		otherArch = fmt.Errorf("guest agent from EMU_AGENT: %w", err)
	}
	if b, ok := embedded(arch); ok {
		return writeOut(b, arch, o.Cache)
	}
	nf := &NotFoundError{Arch: arch, EnvErr: otherArch}
	if o.Exe != "" {
		names := []string{FileName(arch)}
		if arch == "amd64" {
			names = append(names, "emu-agent")
		}
		for _, n := range names {
			p := filepath.Join(filepath.Dir(o.Exe), n)
			if _, err := os.Stat(p); err != nil {
				nf.Looked = append(nf.Looked, p)
				continue
			}
			if err := Check(p, arch); err != nil {
				return "", fmt.Errorf("guest agent beside emu: %w", err)
			}
			return p, nil
		}
	}
	return "", nf
}

// Embedded says which architectures' agents this emu carries (none
// without the embedagents build tag).
func Embedded() []string {
	var have []string
	for _, a := range Arches {
		if _, ok := embedded(a); ok {
			have = append(have, a)
		}
	}
	return have
}

// writeOut writes an embedded agent to cache under a name made of its
// digest, once: a later call finds it there, and uses it only when its
// bytes still have that digest (a damaged copy is written again).
func writeOut(b []byte, arch, cache string) (string, error) {
	if cache == "" {
		return "", errors.New("guest agent: no cache directory to write the built-in agent to")
	}
	sum := sha256.Sum256(b)
	p := filepath.Join(cache, hex.EncodeToString(sum[:8])+"-"+FileName(arch))
	if have, err := os.ReadFile(p); err == nil && sha256.Sum256(have) == sum {
		return p, nil
	}
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	err := disk.WriteAtomic(p, 0o700, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	return p, nil
}

// Check says whether path is a static 64-bit Linux ELF program for arch:
// a guest has no dynamic loader or libc to lend it, and the wrong
// architecture would fail only inside the guest, at its first boot.
func Check(path, arch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("check %s: not an ELF program: %w", path, err)
	}
	defer f.Close()
	want := machines[arch]
	if f.Machine != want {
		return &ArchError{Path: path, Machine: f.Machine, GuestArch: arch}
	}
	if f.Class != elf.ELFCLASS64 || f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return fmt.Errorf("check %s: not a 64-bit Linux program (%s, %s)", path, f.Class, f.OSABI)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("check %s: not a program (%s)", path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("check %s: dynamically linked; the agent must be static (CGO_ENABLED=0)", path)
		}
	}
	return nil
}
