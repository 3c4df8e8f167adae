package disk

import (
	"os"
	"path/filepath"
	"testing"
)

func writeBundle(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSwapDirFirstTime(t *testing.T) {
	root := t.TempDir()
	staged, final := filepath.Join(root, ".x.tmp"), filepath.Join(root, "x")
	writeBundle(t, staged, "new")
	if err := SwapDir(staged, final); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(final, "manifest.json")); got != "new" {
		t.Errorf("final holds %q", got)
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("staged still there: %v", err)
	}
}

func TestSwapDirReplaces(t *testing.T) {
	root := t.TempDir()
	staged, final := filepath.Join(root, ".x.tmp"), filepath.Join(root, "x")
	writeBundle(t, final, "old")
	os.WriteFile(filepath.Join(final, "stale-file"), []byte("x"), 0o644)
	writeBundle(t, staged, "new")
	if err := SwapDir(staged, final); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(final, "manifest.json")); got != "new" {
		t.Errorf("final holds %q", got)
	}
	if _, err := os.Stat(filepath.Join(final, "stale-file")); err == nil {
		t.Errorf("a file of the old bundle survived the swap")
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("the old bundle was not removed: %v", err)
	}
}

func TestDigest(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("abc"), 0o644)
	sum, n, err := Digest(p)
	if err != nil || n != 3 || sum != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("Digest = %s, %d, %v", sum, n, err)
	}
}
