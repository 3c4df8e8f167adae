package instance

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/store"
)

func TestPruneDisks(t *testing.T) {
	home := store.At(t.TempDir())
	old := time.Now().Add(-time.Hour)
	cached := func(name string, age time.Time) {
		dir := filepath.Join(home.DiskCache(), name)
		os.MkdirAll(dir, 0o755)
		raw := filepath.Join(dir, disk.PackedName)
		os.WriteFile(raw, make([]byte, 8192), 0o644)
		os.Chtimes(raw, age, age)
		os.Chtimes(dir, age, age)
	}
	bundleOf := func(name, sum string) {
		dir := filepath.Join(home.Images(), name)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, store.BundleManifest), []byte(`{"name":"`+name+`","files":{"disk.tar.zst":{"sha256":"`+sum+`"}}}`), 0o644)
	}
	instanceOn := func(name, sum string) store.Instance {
		inst := home.Instance(name)
		os.MkdirAll(inst.Dir, 0o755)
		os.WriteFile(inst.Overlay(), []byte("qcow2"), 0o644)
		if sum != "" {
			os.WriteFile(inst.State(), []byte(`{"name":"`+name+`","disk_sha256":"`+sum+`"}`), 0o644)
		}
		return inst
	}
	cached("inimage", old)
	cached("ininstance", old) // the image was rebuilt; the instance's data still needs it
	cached("unused", old)
	cached("fresh", time.Now()) // just unpacked by an up that has not recorded it yet
	cached(".fresh.tmp-1", time.Now())
	cached(".stale.tmp-2", time.Now().Add(-2*time.Hour))
	bundleOf("demo", "inimage")
	bundleOf("broken", "")
	os.WriteFile(filepath.Join(home.Images(), "broken", store.BundleManifest), []byte("{"), 0o644)
	instanceOn("demo", "ininstance")

	p, err := PruneDisks(home, PruneGrace, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Disks, []string{"unused"}) || p.Bytes <= 0 {
		t.Errorf("pruned %v (%d bytes), want [unused]", p.Disks, p.Bytes)
	}
	left, _ := os.ReadDir(home.DiskCache())
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if want := []string{".fresh.tmp-1", "fresh", "inimage", "ininstance"}; !slices.Equal(names, want) {
		t.Errorf("left %v, want %v", names, want)
	}

	// An instance with data but no record of its image: nothing goes.
	cached("unused2", old)
	instanceOn("half", "")
	if _, err := PruneDisks(home, PruneGrace, time.Now()); err == nil {
		t.Errorf("PruneDisks with an unrecorded overlay succeeded")
	}
	if _, err := os.Stat(filepath.Join(home.DiskCache(), "unused2")); err != nil {
		t.Errorf("unused2 removed although an instance's image is unknown: %v", err)
	}
	// An empty home: nothing to do.
	if p, err := PruneDisks(store.At(t.TempDir()), PruneGrace, time.Now()); err != nil || len(p.Disks) != 0 {
		t.Errorf("empty home: %v, %v", p, err)
	}
}
