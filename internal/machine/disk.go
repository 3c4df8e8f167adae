package machine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/store"
)

// BaseDisk returns the unpacked raw disk of a bundle, unpacking it into the
// disk cache the first time. Entries are named by the packed disk's
// sha256 and never change, so an overlay backed by one stays valid even
// after its bundle is rebuilt.
func BaseDisk(ctx context.Context, cacheDir, bundleDir string, man bundle.Manifest) (string, error) {
	sum := man.Files[store.BundleDisk].SHA256
	if sum == "" {
		return "", fmt.Errorf("bundle %s: the manifest names no %s (built by an older emu? rebuild it)", bundleDir, store.BundleDisk)
	}
	dir := filepath.Join(cacheDir, sum)
	raw := filepath.Join(dir, disk.PackedName)
	if _, err := os.Stat(raw); err == nil {
		return raw, nil
	}
	return disk.Unpack(ctx, filepath.Join(bundleDir, store.BundleDisk), dir)
}
