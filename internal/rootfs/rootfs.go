// Package rootfs makes Debian root filesystems with mmdebstrap, as
// tarballs cached by a hash of everything that goes into them.
package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/spec"
)

// Runner runs a host command and returns its output.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// recipe changes whenever the way a tree is made changes, so old cache
// entries are not reused for a different recipe.
const recipe = "1"

// essentials are in every tree: systemd as init, udev to load drivers,
// kmod for modprobe.
var essentials = []string{"systemd", "systemd-sysv", "udev", "kmod"}

// Packages returns the sorted, de-duplicated package list of base.
func Packages(base spec.Base) []string {
	seen := map[string]bool{}
	var pkgs []string
	for _, p := range append(append(append([]string(nil), essentials...), base.Kernel), base.Packages...) {
		if p != "" && !seen[p] {
			seen[p] = true
			pkgs = append(pkgs, p)
		}
	}
	sort.Strings(pkgs)
	return pkgs
}

// Key is the content hash naming base's tarball in the cache.
func Key(base spec.Base) string {
	b, _ := json.Marshal(struct {
		Recipe, Suite, Arch string
		Packages            []string
	}{recipe, base.Suite, base.Arch, Packages(base)})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// Cache is a directory of root filesystem tarballs.
type Cache struct {
	Dir    string
	Runner Runner
}

// mode is mmdebstrap's --mode for this process's user: root mode for
// root, unshare mode (a user namespace, the user's subordinate ids) for
// anyone else. Both make the same tarball (TestRootlessSameTree).
func mode() string {
	if os.Geteuid() == 0 {
		return "root"
	}
	return "unshare"
}

// Path is where base's tarball lives in the cache.
func (c Cache) Path(base spec.Base) string {
	return filepath.Join(c.Dir, Key(base)+".tar.zst")
}

// Ensure returns the tarball for base, making it when the cache has none.
// cached reports whether it was reused. A tarball is written under a
// temporary name and renamed into place, so a failed or interrupted run
// never leaves a partial one behind.
func (c Cache) Ensure(ctx context.Context, base spec.Base) (path string, cached bool, err error) {
	path = c.Path(base)
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		return path, true, nil
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return "", false, fmt.Errorf("create rootfs cache %s: %w", c.Dir, err)
	}
	tmp := filepath.Join(c.Dir, fmt.Sprintf(".%s.tmp-%d.tar.zst", Key(base), os.Getpid()))
	defer os.Remove(tmp)
	m := mode()
	if _, err := c.Runner.Run(ctx, "mmdebstrap", Args(base, m, tmp)...); err != nil {
		return "", false, fmt.Errorf("make root filesystem (%s, %s, mmdebstrap %s mode): %w", base.Suite, strings.Join(base.Packages, " "), m, err)
	}
	if err := disk.Private(tmp); err != nil {
		return "", false, err
	}
	if err := disk.SyncFile(tmp); err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", false, fmt.Errorf("store root filesystem %s: %w", path, err)
	}
	return path, false, nil
}

// Args is mmdebstrap's argv for base in mode, writing the tarball out (its
// extension picks the compression).
func Args(base spec.Base, mode, out string) []string {
	return []string{
		"--mode=" + mode,
		"--variant=minbase",
		"--arch=" + base.Arch,
		"--include=" + strings.Join(Packages(base), ","),
		base.Suite, out,
	}
}
