package disk

import "golang.org/x/sys/unix"

// exchange swaps the names a and b atomically; ENOENT when either is missing.
func exchange(a, b string) error {
	return unix.RenamexNp(a, b, unix.RENAME_SWAP)
}
