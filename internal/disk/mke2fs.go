package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Mke2fsTarMin is the oldest mke2fs whose -d reads a tarball (through
// libarchive, which it loads at run time).
const Mke2fsTarMin = "1.47.1"

var mke2fsVersionRE = regexp.MustCompile(`(?m)^mke2fs (\d+)\.(\d+)(?:\.(\d+))?`)

// ParseMke2fsVersion reads "mke2fs 1.47.0 (5-Feb-2023)", the first line
// of mke2fs -V, into [1 47 0] and "1.47.0".
func ParseMke2fsVersion(out string) ([3]int, string, error) {
	m := mke2fsVersionRE.FindStringSubmatch(out)
	if m == nil {
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return [3]int{}, "", fmt.Errorf("mke2fs -V: no version in %q", first)
	}
	var v [3]int
	for i, s := range m[1:] {
		v[i], _ = strconv.Atoi(s) // digits, or "" for a missing patch level
	}
	return v, strings.TrimPrefix(m[0], "mke2fs "), nil
}

// ReadsTar says whether mke2fs v's -d reads a tarball.
func ReadsTar(v [3]int) bool {
	min, _, _ := ParseMke2fsVersion("mke2fs " + Mke2fsTarMin)
	for i := range v {
		if v[i] != min[i] {
			return v[i] > min[i]
		}
	}
	return true
}

// geteuid is os.Geteuid; tests play a user.
var geteuid = os.Geteuid

// Mke2fsError is a disk that cannot be made from a tarball by this user:
// mke2fs is too old to read one, and only root can unpack the tree with
// its owners.
type Mke2fsError struct {
	Version string // "1.47.0"
	Src     string
}

func (e *Mke2fsError) Error() string {
	return fmt.Sprintf("mke2fs %s cannot read the root tarball %s (its -d reads one from %s on), "+
		"and only root can unpack the tree with its owners", e.Version, e.Src, Mke2fsTarMin)
}

// HintText says what to install.
func (e *Mke2fsError) HintText() string {
	return "install e2fsprogs " + Mke2fsTarMin + " or newer (on Debian 12 from bookworm-backports: " +
		"scripts/install-deps adds it), or build as root; emu doctor prints the commands"
}

// MakeExt4FromTar is MakeExt4 from the tarball src. mke2fs 1.47.1 and
// newer read it as it is. An older one (Debian 12 without backports,
// Ubuntu 24.04) cannot: root then unpacks the tree into a directory beside
// out with GNU tar, keeping owners, modes and extended attributes, makes
// the disk from that and removes it (about twice the time); anyone else
// gets a *Mke2fsError.
func MakeExt4FromTar(ctx context.Context, r Runner, src, out string, size int64) error {
	vout, _ := r.Run(ctx, "mkfs.ext4", "-V")
	v, text, err := ParseMke2fsVersion(string(vout))
	if err != nil || ReadsTar(v) {
		// New enough, or a version emu cannot read: let mke2fs try (its
		// error says why it cannot).
		return MakeExt4(ctx, r, src, out, size)
	}
	if geteuid() != 0 {
		return fmt.Errorf("make ext4 disk %s: %w", out, &Mke2fsError{Version: text, Src: src})
	}
	tree, err := os.MkdirTemp(filepath.Dir(out), ".tree-")
	if err != nil {
		return fmt.Errorf("make ext4 disk %s: %w", out, err)
	}
	defer os.RemoveAll(tree)
	if _, err := r.Run(ctx, "tar", "-x", "-f", src, "-C", tree,
		"--numeric-owner", "--same-owner", "--same-permissions", "--xattrs", "--xattrs-include=*"); err != nil {
		return fmt.Errorf("unpack %s for mke2fs %s (it cannot read a tarball): %w", src, text, err)
	}
	return MakeExt4(ctx, r, tree, out, size)
}
