package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/store"
)

// PruneGrace is how old an unused unpacked disk must be before it is
// pruned: an up that has just unpacked a disk records it in its instance a
// few seconds later, and a build seeds the disk of a bundle it has not yet
// swapped into the store.
const PruneGrace = 10 * time.Minute

// Pruned is what PruneDisks removed.
type Pruned struct {
	Disks []string // the removed entries' names (packed disks' sha256)
	Bytes int64    // disk space freed
}

// PruneDisks removes from the disk cache every unpacked disk that no bundle
// in the image store and no instance uses, once it is older than grace, and
// temporary directories an interrupted unpack left behind. Every instance's
// overlay is backed by its disk, so when one instance's record cannot be
// read nothing is removed.
func PruneDisks(home store.Home, grace time.Duration, now time.Time) (Pruned, error) {
	var p Pruned
	used, err := usedDisks(home)
	if err != nil {
		return p, fmt.Errorf("prune unpacked disks: %w", err)
	}
	entries, err := os.ReadDir(home.DiskCache())
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("prune unpacked disks: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if used[name] || !e.IsDir() {
			continue
		}
		dir := filepath.Join(home.DiskCache(), name)
		wait := grace
		if strings.HasPrefix(name, ".") {
			wait = max(grace, time.Hour) // an unpack may be under way
		}
		if now.Sub(lastChange(dir)) < wait {
			continue
		}
		size, _ := disk.Allocated(filepath.Join(dir, disk.PackedName))
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if !strings.HasPrefix(name, ".") {
			p.Disks = append(p.Disks, name)
		}
		p.Bytes += size
	}
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("prune unpacked disks: %w", err)
	}
	return p, nil
}

// usedDisks returns the packed disks' digests the store's bundles and the
// instances name.
func usedDisks(home store.Home) (map[string]bool, error) {
	used := map[string]bool{}
	images, err := os.ReadDir(home.Images())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range images {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue // staged bundles have not been seeded under their name
		}
		man, err := bundle.Read(filepath.Join(home.Images(), e.Name()))
		if err != nil {
			continue // no usable bundle: nothing can boot from it
		}
		used[man.Files[store.BundleDisk].SHA256] = true
	}
	insts, err := os.ReadDir(home.Instances())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range insts {
		if !e.IsDir() {
			continue
		}
		inst := home.Instance(e.Name())
		info, err := ReadInfo(inst)
		switch {
		case err == nil && info.DiskSHA256 != "":
			used[info.DiskSHA256] = true
		case errors.Is(err, os.ErrNotExist) || err == nil:
			if _, oerr := os.Stat(inst.Overlay()); oerr == nil {
				// An overlay whose base is not recorded yet (an up under
				// way) or any more: keep every disk.
				return nil, fmt.Errorf("instance %s has data but no record of its image", inst.Name)
			}
		default:
			return nil, fmt.Errorf("instance %s: %w", inst.Name, err)
		}
	}
	return used, nil
}

// lastChange is the latest modification time of dir and what it holds.
func lastChange(dir string) time.Time {
	var t time.Time
	if st, err := os.Stat(dir); err == nil {
		t = st.ModTime()
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.ModTime().After(t) {
			t = info.ModTime()
		}
	}
	return t
}
