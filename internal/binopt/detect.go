package binopt

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
)

// Kind is what Detect found a file to be.
type Kind string

// Kinds of files. Only Executable is optimized; the others are kept as they
// are, with a notice.
const (
	Executable Kind = "executable"     // an ELF executable for the target arch (static, dynamic or PIE)
	Script     Kind = "script"         // starts with #!
	SharedLib  Kind = "shared-library" // ET_DYN without the marks of an executable
	Packed     Kind = "upx-packed"     // already compressed by UPX
	WrongArch  Kind = "wrong-arch"     // an ELF file for another machine
	OtherELF   Kind = "other-elf"      // object file, core dump, 32-bit, ...
	Corrupt    Kind = "corrupt-elf"    // ELF magic, but unreadable or truncated
	NotELF     Kind = "not-elf"
)

// ErrSkipped is matched (errors.Is) by a *SkipError: the file is not an
// executable Optimize works on, which is no failure.
var ErrSkipped = errors.New("not an executable to optimize")

// SkipError says why a file is left as it is.
type SkipError struct {
	Path   string
	Kind   Kind
	Reason string
}

func (e *SkipError) Error() string {
	return fmt.Sprintf("%s: %s, left as it is: %s", e.Path, e.Kind, e.Reason)
}

// Is makes every *SkipError match ErrSkipped.
func (e *SkipError) Is(target error) bool { return target == ErrSkipped }

// machines maps the architectures emu builds for to their ELF machine.
var machines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// Detect reports what the file at path is, for a guest of arch ("amd64" or
// "arm64"). For anything but an Executable it returns a *SkipError (which
// matches ErrSkipped) with the reason; other errors are I/O errors.
func Detect(path, arch string) (Kind, error) {
	want, ok := machines[arch]
	if !ok {
		return "", fmt.Errorf("detect %s: unsupported arch %q: want amd64 or arm64", path, arch)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	head := make([]byte, 4096)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	head = head[:n]
	skip := func(k Kind, format string, args ...any) (Kind, error) {
		return k, &SkipError{Path: path, Kind: k, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case bytes.HasPrefix(head, []byte("#!")):
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		return skip(Script, "a script (#!%s)", bytes.TrimSpace(line))
	case !bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return skip(NotELF, "not an ELF file")
	}
	ef, err := elf.NewFile(f)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return skip(Corrupt, "truncated: its ELF headers run past the end of the file (%d bytes)", fi.Size())
	}
	if err != nil {
		return skip(Corrupt, "unreadable ELF: %v", err)
	}
	defer ef.Close()
	if reason := truncated(ef, fi.Size()); reason != "" {
		return skip(Corrupt, "%s", reason)
	}
	if ef.Machine != want {
		return skip(WrongArch, "built for %s, the target is %s (%s)", machineName(ef.Machine), arch, want)
	}
	if ef.Class != elf.ELFCLASS64 {
		return skip(OtherELF, "a %s file; want a 64-bit executable", ef.Class)
	}
	if bytes.Contains(head, []byte("UPX!")) {
		return skip(Packed, "already compressed by UPX")
	}
	switch ef.Type {
	case elf.ET_EXEC:
		return Executable, nil
	case elf.ET_DYN:
		return classifyDyn(path, ef)
	}
	return skip(OtherELF, "ELF type %s, not an executable", ef.Type)
}

// classifyDyn tells a position-independent executable from a shared
// library; both are ET_DYN. A PIE has DF_1_PIE (static-pie too) or, from
// older linkers, an interpreter and no soname. libc.so.6 has an interpreter
// and a soname: a library that can also run, treated as a library.
func classifyDyn(path string, ef *elf.File) (Kind, error) {
	interp := false
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			interp = true
		}
	}
	flags1, err := ef.DynValue(elf.DT_FLAGS_1)
	if err != nil {
		return Corrupt, &SkipError{Path: path, Kind: Corrupt, Reason: fmt.Sprintf("unreadable dynamic section: %v", err)}
	}
	sonames, _ := ef.DynString(elf.DT_SONAME)
	pie := false
	for _, v := range flags1 {
		if elf.DynFlag1(v)&elf.DF_1_PIE != 0 {
			pie = true
		}
	}
	switch {
	case pie:
		return Executable, nil
	case len(sonames) > 0:
		return SharedLib, &SkipError{Path: path, Kind: SharedLib, Reason: fmt.Sprintf("a shared library (soname %s)", sonames[0])}
	case interp:
		return Executable, nil
	}
	return SharedLib, &SkipError{Path: path, Kind: SharedLib, Reason: "a shared object without an interpreter or PIE flag"}
}

// truncated names a program or section header that points past the end of
// the file, as a cut-off download or copy leaves it.
func truncated(ef *elf.File, size int64) string {
	for i, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && p.Off+p.Filesz > uint64(size) {
			return fmt.Sprintf("truncated: segment %d ends at byte %d, the file has %d", i, p.Off+p.Filesz, size)
		}
	}
	for _, s := range ef.Sections {
		if s.Type != elf.SHT_NOBITS && s.Type != elf.SHT_NULL && s.Offset+s.FileSize > uint64(size) {
			return fmt.Sprintf("truncated: section %s ends at byte %d, the file has %d", s.Name, s.Offset+s.FileSize, size)
		}
	}
	if len(ef.Progs) == 0 && ef.Type != elf.ET_REL {
		return "no program headers"
	}
	return ""
}

func machineName(m elf.Machine) string {
	for arch, mm := range machines {
		if m == mm {
			return arch
		}
	}
	return m.String()
}
