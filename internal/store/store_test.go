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
	// A root emu made readable by others before is made private.
	os.Chmod(h.Cache, 0o755)
	if err := h.Claim(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(h.Cache); fi.Mode().Perm() != 0o700 {
		t.Errorf("cache left %v", fi.Mode().Perm())
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
