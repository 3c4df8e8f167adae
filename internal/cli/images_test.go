package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/golden"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/store"
)

// writeImage puts a bundle's manifest.json (and origin.json, when from is
// set) in the store: all emu images reads.
func writeImage(t *testing.T, home store.Home, name, arch, from string) {
	t.Helper()
	dir := filepath.Join(home.Images(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := bundle.Manifest{
		Name: name, Arch: arch, Created: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), EmuVersion: "v1.2.3",
		Files: map[string]bundle.FileRecord{
			store.BundleDisk:   {SHA256: strings.Repeat("d", 64), Size: 94_000_000},
			store.BundleKernel: {SHA256: strings.Repeat("a", 64), Size: 8_000_000},
			store.BundleInitrd: {SHA256: strings.Repeat("b", 64), Size: 20_000_000},
		},
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, store.BundleManifest), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if from == "" {
		return
	}
	o := oci.Origin{Ref: from, Digest: "sha256:" + strings.Repeat("e", 64), Index: "sha256:" + strings.Repeat("f", 64), Pulled: m.Created.Add(time.Hour)}
	b, _ = json.MarshalIndent(o, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, store.BundleOrigin), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// images --json, as scripts read it: an image built here (its digest the
// one a push makes), one pulled, and what is not an image skipped.
func TestGoldenImagesJSON(t *testing.T) {
	root := t.TempDir()
	t.Setenv("EMU_HOME", root)
	home := store.At(root)
	writeImage(t, home, "demo", "amd64", "")
	writeImage(t, home, "shop", "arm64", "ghcr.io/acme/shop:2")
	for _, d := range []string{".demo.tmp-42", "empty"} {
		if err := os.MkdirAll(filepath.Join(home.Images(), d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, errs, code := run(t, "images", "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	golden.Check(t, "images.json", []byte(strings.ReplaceAll(out, root, "$EMU_HOME")))
	// The built image's digest is its artifact's.
	cfg, _ := os.ReadFile(filepath.Join(home.Images(), "demo", store.BundleManifest))
	a, err := oci.NewArtifact(cfg, Version)
	if err != nil || !strings.Contains(out, a.Digest.String()) {
		t.Errorf("images --json lacks the artifact digest %s (%v)", a.Digest, err)
	}
}
