package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClaim(t *testing.T) {
	root := t.TempDir()
	h := At(filepath.Join(root, "emu"))
	if err := h.Claim(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{h.Data, h.Cache, h.State} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, %v; want 0700", d, fi.Mode(), err)
		}
	}
	// A home an older emu made (0755 directories, 0644 and 0755 files)
	// is made private, all of it.
	os.Chmod(h.Cache, 0o755)
	sub := filepath.Join(h.Cache, "rootfs")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "x.tar.zst"), nil, 0o644)
	os.WriteFile(filepath.Join(sub, "prog"), nil, 0o755)
	if err := h.Claim(); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{h.Cache: 0o700, sub: 0o700, filepath.Join(sub, "x.tar.zst"): 0o600, filepath.Join(sub, "prog"): 0o700} {
		if fi, _ := os.Stat(p); fi.Mode().Perm() != want {
			t.Errorf("%s left %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

// TestClaimForeign: a home another user owns is refused, root's for a
// user and a user's for root alike.
func TestClaimForeign(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "theirs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	} else {
		dir = "/" // root's
	}
	h := Home{Data: dir, Cache: dir, State: dir}
	err := h.Claim()
	if err == nil || !strings.Contains(err.Error(), "belongs to uid") {
		t.Fatalf("Claim of another user's directory = %v", err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
		t.Errorf("another user's directory changed to %v", fi.Mode().Perm())
	}
}
