// Package disk makes and converts the image's disk: ext4 from a tree with
// no loop mounts, packing it as one zstd stream and back, overlays, and
// atomic placement of the results.
package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Runner runs a host command and returns its output.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Label is the root filesystem's label.
const Label = "emu-root"

// MakeExt4 writes a sparse raw disk of size bytes at out holding one ext4
// filesystem with the contents of src, a directory or a tar file (mkfs.ext4
// -d: no mounts, no privileges; owners are copied from the directory or
// the tar headers; a tar file needs e2fsprogs 1.47.1 or newer with
// libarchive).
//
// The filesystem has no journal: provisioning runs on a throwaway disk, and
// a journal written during it would keep stale copies of metadata that
// trimming cannot reach. AddJournal gives the finished disk a fresh one.
func MakeExt4(ctx context.Context, r Runner, src, out string, size int64) error {
	_ = os.Remove(out)
	args := []string{
		"-q", "-F", "-L", Label,
		"-m", "0", // no blocks reserved for root: the guest is single-purpose
		"-O", "^has_journal",
		"-E", "lazy_itable_init=0", // no background zeroing in the guest
		"-d", src, out, fmt.Sprintf("%dk", size/1024),
	}
	if _, err := r.Run(ctx, "mkfs.ext4", args...); err != nil {
		return fmt.Errorf("make ext4 disk %s from %s: %w", out, src, err)
	}
	return Private(out)
}

// Private makes the file at path readable and writable by its owner only
// (0600), for what a tool created with the usual 0644: everything emu
// keeps for a user is that user's alone.
func Private(path string) error {
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("make %s private: %w", path, err)
	}
	return nil
}

// AddJournal adds a fresh, zeroed journal to the ext4 filesystem in raw (a
// clean, unmounted disk), so the image's data survives an unclean stop.
// Zeroed blocks cost nothing once compressed.
func AddJournal(ctx context.Context, r Runner, raw string) error {
	if _, err := r.Run(ctx, "tune2fs", "-O", "has_journal", "-J", "size=32", raw); err != nil {
		return fmt.Errorf("add journal to %s: %w", raw, err)
	}
	return nil
}

// CreateOverlay creates a qcow2 at dst backed by base, a raw disk
// (read-only use of base: every write lands in dst).
func CreateOverlay(ctx context.Context, r Runner, base, dst string) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("create overlay %s on %s: %w", dst, base, err)
	}
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", abs, dst); err != nil {
		return fmt.Errorf("create overlay %s on %s: %w", dst, base, err)
	}
	return Private(dst)
}

// SyncFile flushes path's data to stable storage.
func SyncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// Digest returns the sha256 (hex) and the size of path.
func Digest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("digest %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("digest %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Allocated returns the bytes path occupies on disk (sparse files count
// only their written blocks).
func Allocated(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}

// SwapDir puts the directory staged at final in one atomic step. When final
// exists, the two are exchanged (renameat2 RENAME_EXCHANGE on Linux,
// renamex_np RENAME_SWAP on macOS) and the old one,
// now at staged, is removed: at no moment is there no complete final.
func SwapDir(staged, final string) error {
	if err := syncDir(staged); err != nil {
		return err
	}
	err := exchange(staged, final)
	switch {
	case err == nil:
		if rerr := os.RemoveAll(staged); rerr != nil {
			return fmt.Errorf("remove previous %s (now at %s): %w", final, staged, rerr)
		}
	case errors.Is(err, unix.ENOENT):
		if err := os.Rename(staged, final); err != nil {
			return fmt.Errorf("place %s: %w", final, err)
		}
	default:
		return fmt.Errorf("place %s: exchange with %s: %w", final, staged, err)
	}
	return syncDir(filepath.Dir(final))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// WriteAtomic writes dst through write, under a temporary name beside it
// (".NAME.tmp*"), with mode, synced and renamed into place: on error dst is
// as it was and the temporary file is gone.
func WriteAtomic(dst string, mode os.FileMode, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}
