// Package store names every file and directory emu keeps on the host: the
// image store, the caches, the build work directories, the logs.
package store

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Home is emu's set of directories. EMU_HOME puts all of them under one
// root; otherwise they follow the XDG base directory conventions.
type Home struct {
	Data  string // images
	Cache string // root filesystem tarballs, probe results
	State string // work directories, logs, instances
}

// FromEnv returns the Home for this user, as the environment (getenv)
// sets it: EMU_HOME, else the XDG directories. Its three roots exist when
// it returns, private to this user (Claim).
func FromEnv(getenv func(string) string) (Home, error) {
	var h Home
	if root := getenv("EMU_HOME"); root != "" {
		abs, err := filepath.Abs(root)
		if err != nil {
			return Home{}, fmt.Errorf("resolve EMU_HOME %q: %w", root, err)
		}
		h = At(abs)
	} else {
		home, err := os.UserHomeDir()
		if err != nil {
			return Home{}, fmt.Errorf("find home directory (set EMU_HOME): %w", err)
		}
		h = Home{
			Data:  xdg(getenv("XDG_DATA_HOME"), filepath.Join(home, ".local", "share"), "emu"),
			Cache: xdg(getenv("XDG_CACHE_HOME"), filepath.Join(home, ".cache"), "emu"),
			State: xdg(getenv("XDG_STATE_HOME"), filepath.Join(home, ".local", "state"), "emu"),
		}
	}
	if err := h.Claim(); err != nil {
		return Home{}, err
	}
	return h, nil
}

// Claim makes the home's roots (Data, Cache, State) if they are missing,
// 0700, and checks that this user owns them: root and every user keep
// their own images, caches and instances, never one shared set (a cache
// written by root is one a user cannot update, and one a user wrote is
// one root would trust). A root of this user's that others could read,
// as emu made them before, is made private.
func (h Home) Claim() error {
	uid := os.Geteuid()
	for _, dir := range []string{h.Data, h.Cache, h.State} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("check %s: %w", dir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		if int(st.Uid) != uid {
			return fmt.Errorf("use %s: it belongs to uid %d, not to this user (uid %d): root and each user keep their own images and caches; unset EMU_HOME (or sudo's preserved environment) or point it at a directory of this user's", dir, st.Uid, uid)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			// An older emu's home: everything in it was 0755 and 0644.
			if err := privatize(dir); err != nil {
				return err
			}
		}
	}
	return nil
}

// At returns a Home with everything under root.
func At(root string) Home {
	return Home{
		Data:  filepath.Join(root, "data"),
		Cache: filepath.Join(root, "cache"),
		State: filepath.Join(root, "state"),
	}
}

func xdg(v, def, name string) string {
	if filepath.IsAbs(v) {
		return filepath.Join(v, name)
	}
	return filepath.Join(def, name)
}

// privatize takes group and other access from dir and everything under
// it (symlinks aside).
func privatize(dir string) error {
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&os.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return os.Chmod(p, fi.Mode()&os.ModeType|perm&^0o077)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// Images is the image store: one bundle directory per stack name.
func (h Home) Images() string { return filepath.Join(h.Data, "images") }

// Blobs holds the blobs of pulls not yet placed, by digest
// (blobs/sha256/<hex>, and <hex>.partial while one downloads): an
// interrupted pull resumes from them. It sits beside Images so that a
// finished blob moves into its bundle with a rename.
func (h Home) Blobs() string { return filepath.Join(h.Data, "blobs") }

// RootfsCache holds root filesystem tarballs by content hash.
func (h Home) RootfsCache() string { return filepath.Join(h.Cache, "rootfs") }

// DiskCache holds unpacked bundle disks, one directory per packed disk's
// sha256; instances' overlays are backed by them.
func (h Home) DiskCache() string { return filepath.Join(h.Cache, "disks") }

// BundleName is the directory name, under Images, of a stack's image for
// arch: the stack's name for the architecture its file names (base.arch),
// NAME.ARCH for another. No stack name holds a dot, so the two never meet.
func BundleName(name, arch, stackArch string) string {
	if arch == stackArch {
		return name
	}
	return name + "." + arch
}

// Agents holds the guest agents built into emu, written out for builds
// (agentbin.Find).
func (h Home) Agents() string { return filepath.Join(h.Cache, "agents") }

// AccelCache is the accelerator probe's answer.
func (h Home) AccelCache() string { return filepath.Join(h.Cache, "accel.json") }

// Work holds build work directories; each is removed when its build ends.
func (h Home) Work() string { return filepath.Join(h.State, "work") }

// BuildLogs is where the logs of stack name's builds are kept.
func (h Home) BuildLogs(name string) string { return filepath.Join(h.State, "logs", "build", name) }

// VerifyLogs is where the console log of stack name's last boot check is kept.
func (h Home) VerifyLogs(name string) string { return filepath.Join(h.State, "logs", "verify", name) }

// Locks holds the build locks, one per bundle path (build.lockOutput).
func (h Home) Locks() string { return filepath.Join(h.State, "locks") }

// Instances holds one directory per instance (stack name).
func (h Home) Instances() string { return filepath.Join(h.State, "instances") }

// Instance names every file of one instance's state directory.
type Instance struct {
	Name string
	Dir  string
}

// Instance returns stack name's instance.
func (h Home) Instance(name string) Instance {
	return Instance{Name: name, Dir: filepath.Join(h.Instances(), name)}
}

// Overlay is the instance's disk: copy-on-write over the bundle's disk.
// It survives down and up; reset removes it.
func (i Instance) Overlay() string { return filepath.Join(i.Dir, "overlay.qcow2") }

// QMP is the QEMU monitor socket.
func (i Instance) QMP() string { return filepath.Join(i.Dir, "qmp.sock") }

// Agent is the guest agent's channel.
func (i Instance) Agent() string { return filepath.Join(i.Dir, "agent.sock") }

// Serial is the guest console's log.
func (i Instance) Serial() string { return filepath.Join(i.Dir, SerialLog) }

// QEMULog is QEMU's own output.
func (i Instance) QEMULog() string { return filepath.Join(i.Dir, QEMULog) }

// PID is the running QEMU's pid file.
func (i Instance) PID() string { return filepath.Join(i.Dir, "qemu.pid") }

// Lock serializes emu commands on the instance.
func (i Instance) Lock() string { return filepath.Join(i.Dir, "lock") }

// Runtime is the runtime config handed to the guest through fw_cfg.
func (i Instance) Runtime() string { return filepath.Join(i.Dir, "runtime.json") }

// SavedState is the guest's memory and devices saved by a suspend
// (emu down); it is valid only with the overlay as it was then.
func (i Instance) SavedState() string { return filepath.Join(i.Dir, "state.zst") }

// SavedMeta describes SavedState; it is written last, so a state without
// it is incomplete.
func (i Instance) SavedMeta() string { return filepath.Join(i.Dir, "state.json") }

// SuspendFailed holds why the last suspend did not finish, for the next
// up to say.
func (i Instance) SuspendFailed() string { return filepath.Join(i.Dir, "suspend-failed") }

// State records how the instance was started (instance.json).
func (i Instance) State() string { return filepath.Join(i.Dir, "instance.json") }

// Bundle file names.
const (
	// BundleDisk is the disk packed as one zstd stream (disk.Pack); it is
	// unpacked once per host into DiskCache before it boots.
	BundleDisk     = "disk.tar.zst"
	BundleKernel   = "vmlinuz"
	BundleInitrd   = "initrd.img"
	BundleManifest = "manifest.json"
	BundleLog      = "provision.log"
	// BundleOrigin records where a pulled bundle came from (its reference
	// and manifest digest); a bundle built here has none.
	BundleOrigin = "origin.json"
)

// Build work directory file names.
const (
	WorkTree     = "tree"     // the files emu adds to the base tree
	WorkRootTar  = "root.tar" // the base and those files, for mke2fs -d
	WorkDisk     = "disk.raw"
	WorkKernel   = "vmlinuz"
	WorkInitrd   = "initrd.img"
	AgentSocket  = "agent.sock"
	SerialLog    = "serial.log"
	ProvisionLog = "provision.log"
	QEMULog      = "qemu.log"
)
