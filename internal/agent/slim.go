package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/emu-dev/emu/internal/event"
)

// DefaultSlim is removed from every image after the bake: package caches
// and lists (the image has no network to use them), temporary files.
var DefaultSlim = []string{
	"/var/cache/apt/*.bin",
	"/var/cache/apt/archives/*.deb",
	"/var/lib/apt/lists/*_*",
	"/tmp/*",
	"/var/tmp/*",
	"/var/cache/debconf/*-old",
	// Documentation and translations: an emulator image has no reader for
	// them (the reference left 80 MB of these in).
	"/usr/share/doc/*",
	"/usr/share/man/*",
	"/usr/share/info/*",
	"/usr/share/locale/*",
	"/usr/share/lintian/*",
	// The bake's journal: step output must not stay in the image. Only the
	// files; the directory keeps the journal persistent at run time.
	"/var/log/journal/*/*",
}

// slim stops the services, prunes the container storage when asked (the
// services' containers are gone by then: --rm), removes the given paths and
// the default ones (Options.SlimDefaults, which Start sets), and discards
// the freed blocks so the host's disk file keeps no stale data.
func (a *Agent) slim(ctx context.Context, paths []string, prune bool) (map[string]string, error) {
	a.stopServices(ctx)
	if prune {
		if err := a.prune(ctx); err != nil {
			return nil, err
		}
	}
	if a.opts.System != nil {
		// journald moves to /run for the rest of this boot, so the
		// journal files below can go and nothing writes them again.
		if err := run(ctx, "journalctl", "--relinquish-var"); err != nil {
			a.emit(event.New(event.Log, "slim", err.Error()))
		}
	}
	removed := 0
	for _, pattern := range append(append([]string(nil), paths...), a.opts.SlimDefaults...) {
		matches, err := filepath.Glob(pattern)
		if err != nil {
			return nil, fmt.Errorf("slim: bad pattern %q: %w", pattern, err)
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return nil, fmt.Errorf("slim: remove %s: %w", m, err)
			}
			removed++
		}
	}
	unix.Sync()
	fields := map[string]string{"removed": strconv.Itoa(removed)}
	var trimmed uint64
	for _, root := range a.opts.TrimPaths {
		n, err := Trim(root)
		if err != nil {
			// A filesystem without discard (the test initramfs) still works.
			a.emit(event.New(event.Log, "slim", err.Error()))
			continue
		}
		trimmed += n
	}
	fields["trimmed"] = strconv.FormatUint(trimmed, 10)
	unix.Sync()
	return fields, nil
}

// fitrim is FITRIM from linux/fs.h: _IOWR('X', 121, struct fstrim_range).
const fitrim = 0xc0185879

// fstrimRange mirrors struct fstrim_range from linux/fs.h.
type fstrimRange struct {
	Start, Len, MinLen uint64
}

// Trim discards the unused blocks of the filesystem holding path (FITRIM,
// what fstrim does) and returns how many bytes the kernel trimmed.
func Trim(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w", path, err)
	}
	defer f.Close()
	r := fstrimRange{Len: ^uint64(0)}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fitrim, uintptr(unsafe.Pointer(&r)))
	if errno != 0 {
		return 0, fmt.Errorf("trim %s: %w", path, errno)
	}
	return r.Len, nil
}
