package spec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// One stack file for both architectures: ${arch} in a file's src picks
// each architecture's build, the default kernel follows base.arch, and
// ForArch moves a stack to the other architecture, refusing when a
// file for it is missing.
func TestForArch(t *testing.T) {
	dir := t.TempDir()
	for _, a := range []string{"amd64", "arm64"} {
		os.MkdirAll(filepath.Join(dir, "bin", "linux-"+a), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "bin", "linux-amd64", "api"), []byte("amd64 api"), 0o755)
	path := filepath.Join(dir, "emu.yaml")
	os.WriteFile(path, []byte(`name: two
files:
  - {src: "./bin/linux-${arch}/api", dst: /usr/local/bin/api}
`), 0o644)
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Base.Arch != "amd64" || s.Base.Kernel != "linux-image-cloud-amd64" {
		t.Errorf("defaults: arch %q kernel %q", s.Base.Arch, s.Base.Kernel)
	}
	if got := s.FilePath(s.Files[0]); got != filepath.Join(dir, "bin", "linux-amd64", "api") {
		t.Errorf("FilePath = %s", got)
	}
	if _, err := s.ForArch("arm64"); err == nil || !strings.Contains(err.Error(), "files[0].src: ./bin/linux-${arch}/api for arm64") {
		t.Errorf("ForArch(arm64) without the arm64 file: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "bin", "linux-arm64", "api"), []byte("arm64 api"), 0o755)
	arm, err := s.ForArch("arm64")
	if err != nil {
		t.Fatal(err)
	}
	if arm.Base.Arch != "arm64" || arm.Base.Kernel != "linux-image-cloud-arm64" || arm.FilePath(arm.Files[0]) != filepath.Join(dir, "bin", "linux-arm64", "api") {
		t.Errorf("for arm64: arch %q kernel %q file %s", arm.Base.Arch, arm.Base.Kernel, arm.FilePath(arm.Files[0]))
	}
	if s.Base.Arch != "amd64" {
		t.Errorf("ForArch changed the stack it was called on")
	}
	if _, err := s.ForArch("riscv64"); err == nil {
		t.Error("ForArch(riscv64) worked")
	}
	// A kernel not named for the architecture stays as it is.
	s.Base.Kernel = "linux-image-generic-custom"
	if arm, _ := s.ForArch("arm64"); arm.Base.Kernel != "linux-image-generic-custom" {
		t.Errorf("a custom kernel became %q", arm.Base.Kernel)
	}
	// A file missing for base.arch itself fails the load, naming the field.
	os.WriteFile(path, []byte("name: two\nbase: {arch: arm64}\nfiles:\n  - {src: \"./bin/linux-${arch}/none\", dst: /x}\n"), 0o644)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "files[0].src") {
		t.Errorf("a missing ${arch} file: %v", err)
	}
}
