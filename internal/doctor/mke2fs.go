package doctor

import (
	"context"
	"fmt"
	"strings"

	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
)

// libarchiveSO is the library mke2fs loads (dlopen) to read a tarball.
const libarchiveSO = "libarchive.so.13"

// mke2fsChecks check that mke2fs can make the disk straight from the
// root tarball (mke2fs -d TARBALL): mke2fs disk.Mke2fsTarMin or newer,
// and libarchive. Root can do without both (disk.MakeExt4FromTar unpacks
// the tree first): for root an older mke2fs is a warning. A missing mke2fs
// is Run's mkfs.ext4 check (the same package).
func mke2fsChecks(ctx context.Context, opts Options) []Check {
	p, err := command.LookSbin(opts.LookPath, "mke2fs")
	if err != nil {
		return []Check{libarchiveCheck(ctx, opts)}
	}
	c, readsTar := mke2fsVersionCheck(ctx, opts, p)
	if !readsTar && opts.Account.UID == 0 {
		return []Check{c}
	}
	return []Check{c, libarchiveCheck(ctx, opts)}
}

// mke2fsVersionCheck also says whether this mke2fs reads a tarball (true
// when its version is unknown: mke2fs then has its say).
func mke2fsVersionCheck(ctx context.Context, opts Options, path string) (Check, bool) {
	c := Check{Name: "mke2fs version"}
	out, err := opts.Command(ctx, path, "-V")
	v, text, perr := disk.ParseMke2fsVersion(string(out))
	switch {
	case perr != nil && err != nil:
		c.Detail = fmt.Sprintf("%s -V: %v", path, err)
		return c, true
	case perr != nil:
		c.Detail = perr.Error()
		return c, true
	}
	if disk.ReadsTar(v) {
		c.OK, c.Detail = true, text+" (makes the disk from the root tarball)"
		return c, true
	}
	c.Detail = text + " is older than " + disk.Mke2fsTarMin + ": its -d does not read the root tarball"
	if opts.Account.UID == 0 {
		c.OK, c.Warn = true, true
		c.Detail += "; root builds unpack the tree first (slower), and other users cannot build"
	}
	if codename(opts) == "bookworm" {
		c.Fix = opts.sudo() + "apt-get install -t bookworm-backports e2fsprogs libarchive13 " +
			"(bookworm-backports must be among apt's sources: echo 'deb http://deb.debian.org/debian bookworm-backports main' | " +
			opts.sudo() + "tee /etc/apt/sources.list.d/backports.list; " + opts.sudo() + "apt-get update)"
	} else {
		c.Fix = "install e2fsprogs " + disk.Mke2fsTarMin + " or newer (Debian 13 has 1.47.2) and libarchive (" + libarchiveSO + ")"
	}
	return c, false
}

// libDirs are where the dynamic linker finds libraries on Debian and
// most others, by host architecture.
func libDirs(arch string) []string {
	var dirs []string
	if t := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[arch]; t != "" {
		dirs = append(dirs, "/usr/lib/"+t, "/lib/"+t)
	}
	return append(dirs, "/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib")
}

func libarchiveCheck(ctx context.Context, opts Options) Check {
	c := Check{Name: "libarchive"}
	for _, d := range libDirs(opts.HostArch) {
		if p := d + "/" + libarchiveSO; opts.Exists(p) {
			c.OK, c.Detail = true, p
			return c
		}
	}
	if p := ldconfigFind(ctx, opts, libarchiveSO); p != "" {
		c.OK, c.Detail = true, p
		return c
	}
	c.Detail = libarchiveSO + " not found (mke2fs -d loads it to read the root tarball)"
	// Debian 13 renamed it for the 64-bit time_t transition.
	c.pkg = "libarchive13t64"
	switch codename(opts) {
	case "bookworm", "bullseye", "jammy", "focal":
		c.pkg = "libarchive13"
	}
	c.Fix = opts.sudo() + aptInstall(c.pkg)
	return c
}

// ldconfigFind is lib's path in the dynamic linker's cache, or "".
func ldconfigFind(ctx context.Context, opts Options, lib string) string {
	p, err := command.LookSbin(opts.LookPath, "ldconfig")
	if err != nil {
		return ""
	}
	out, err := opts.Command(ctx, p, "-p")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(out), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), " ")
		if _, path, found := strings.Cut(rest, "=> "); ok && found && name == lib {
			return strings.TrimSpace(path)
		}
	}
	return ""
}

// codename is VERSION_CODENAME from os-release, e.g. "bookworm"; "" when
// unknown.
func codename(opts Options) string {
	for _, f := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		b, err := opts.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "VERSION_CODENAME="); ok {
				return strings.Trim(v, `"'`)
			}
		}
		return ""
	}
	return ""
}
