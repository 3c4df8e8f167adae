package build

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockOutput takes the lock on the bundle at final for this build's whole
// run: a second build of the same stack into the same place fails at once,
// naming the first, instead of racing it for the staged directory and the
// swap. The lock is a flock, so it dies with its holder, even by SIGKILL.
// Its file lives in dir (store.Home.Locks), named by final's path, so
// nothing is left beside the bundles; it is never removed (removing a
// flock's file lets two holders lock two files).
func lockOutput(dir, final string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	sum := sha256.Sum256([]byte(final))
	path := filepath.Join(dir, "build-"+hex.EncodeToString(sum[:8])+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open build lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := ""
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = fmt.Sprintf(" (pid %d)", pid)
				}
			}
			return nil, fmt.Errorf("another emu build or pull%s is writing %s: wait for it to end", holder, final)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}

// LockOutput takes the same lock for another writer of a bundle directory
// (emu pull), so that a pull and a build of one name never race for it.
func LockOutput(locks, final string) (release func(), err error) {
	return lockOutput(locks, final)
}
