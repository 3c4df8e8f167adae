package rootfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/spec"
)

var base = spec.Base{Suite: "trixie", Arch: "amd64", Kernel: "linux-image-cloud-amd64", Packages: []string{"postgresql", "valkey-server"}}

func TestKey(t *testing.T) {
	reordered := base
	reordered.Packages = []string{"valkey-server", "postgresql", "postgresql"}
	if Key(base) != Key(reordered) {
		t.Errorf("package order or duplicates change the key")
	}
	for _, change := range []func(*spec.Base){
		func(b *spec.Base) { b.Suite = "bookworm" },
		func(b *spec.Base) { b.Arch = "arm64" },
		func(b *spec.Base) { b.Kernel = "linux-image-amd64" },
		func(b *spec.Base) { b.Packages = append([]string{"curl"}, b.Packages...) },
	} {
		b := base
		b.Packages = append([]string(nil), base.Packages...)
		change(&b)
		if Key(b) == Key(base) {
			t.Errorf("key unchanged for %+v", b)
		}
	}
}

func TestArgs(t *testing.T) {
	got := strings.Join(Args(base, "unshare", "/c/out.tar.zst"), " ")
	want := "--mode=unshare --variant=minbase --arch=amd64 --include=kmod,linux-image-cloud-amd64,postgresql,systemd,systemd-sysv,udev,valkey-server trixie /c/out.tar.zst"
	if got != want {
		t.Errorf("Args =\n  %s\nwant\n  %s", got, want)
	}
}

// fakeRunner plays mmdebstrap: writes the output tarball, or fails.
type fakeRunner struct {
	calls int
	fail  bool
}

func (f *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.calls++
	if f.fail {
		out := args[len(args)-1]
		os.WriteFile(out, []byte("partial"), 0o644)
		return nil, errors.New("mmdebstrap: E: apt failed")
	}
	return nil, os.WriteFile(args[len(args)-1], []byte("tarball"), 0o644)
}

func TestEnsureCaches(t *testing.T) {
	r := &fakeRunner{}
	c := Cache{Dir: t.TempDir(), Runner: r}
	p1, cached, err := c.Ensure(context.Background(), base)
	if err != nil || cached {
		t.Fatalf("first Ensure = %s, cached=%v, %v", p1, cached, err)
	}
	p2, cached, err := c.Ensure(context.Background(), base)
	if err != nil || !cached || p2 != p1 || r.calls != 1 {
		t.Fatalf("second Ensure = %s, cached=%v, calls=%d, %v", p2, cached, r.calls, err)
	}
}

func TestEnsureFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	c := Cache{Dir: dir, Runner: &fakeRunner{fail: true}}
	if _, _, err := c.Ensure(context.Background(), base); err == nil || !strings.Contains(err.Error(), "apt failed") {
		t.Fatalf("Ensure = %v, want the tool's error", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("left in the cache: %s", ents[0].Name())
	}
	if _, err := os.Stat(filepath.Join(dir, Key(base)+".tar.zst")); err == nil {
		t.Errorf("a failed run left a cache entry")
	}
}
