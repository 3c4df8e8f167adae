package disk

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// A root tree reaches its disk as one tar stream: the base tarball as
// mmdebstrap made it, then the files emu adds, which mke2fs -d reads
// directly (e2fsprogs 1.47.1 or newer). No tree is unpacked on the host,
// so owners, device nodes and hard links come through as the tarball has
// them, for root and for a user without privileges alike.

// Layer is what Compose lays over a base tarball.
type Layer struct {
	// Dir holds the files to add, at their guest paths. Each becomes a
	// root-owned entry with its own mode, replacing a base entry of the
	// same path (mke2fs -d keeps the last entry of a path). A directory the
	// base already has keeps the base's owner and mode; a new one is 0755.
	Dir string
	// Take, when set, picks regular files of the base to leave out of the
	// output (name is the clean absolute guest path: "/boot/vmlinuz-6.1").
	// Save, when set, is handed the contents of each.
	Take func(name string) bool
	Save func(name string, r io.Reader) error
}

// Composed reports what Compose wrote.
type Composed struct {
	// Size is the apparent size of the regular files in the result.
	Size int64
	// Entries is the number of entries written.
	Entries int
}

// maxLinkHops bounds symlink resolution, as the kernel does (ELOOP).
const maxLinkHops = 40

// Compose writes to out the tar stream base with the layer's files after
// it. A layer path whose parent is a symlink in the base (/lib on a
// merged-/usr tree) is written at the symlink's target, as writing into the
// unpacked tree would have put it. It stops between entries once ctx ends.
func Compose(ctx context.Context, base io.Reader, l Layer, out io.Writer) (Composed, error) {
	var c Composed
	tw := tar.NewWriter(out)
	tr := tar.NewReader(base)
	links := map[string]string{} // symlinks of the base: guest path -> target
	dirs := map[string]bool{"/": true}
	sizes := map[string]int64{}
	for {
		if err := ctx.Err(); err != nil {
			return c, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return c, fmt.Errorf("read base tarball: %w", err)
		}
		name := guestPath(h.Name)
		switch h.Typeflag {
		case tar.TypeReg:
			if l.Take != nil && l.Take(name) {
				if l.Save != nil {
					if err := l.Save(name, tr); err != nil {
						return c, err
					}
				}
				continue
			}
			sizes[name] = h.Size
		case tar.TypeDir:
			dirs[name] = true
		case tar.TypeSymlink:
			links[name] = h.Linkname
		}
		if err := tw.WriteHeader(h); err != nil {
			return c, fmt.Errorf("write %s: %w", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return c, fmt.Errorf("copy %s: %w", h.Name, err)
			}
		}
		c.Entries++
	}
	if l.Dir != "" {
		err := filepath.WalkDir(l.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			rel, err := filepath.Rel(l.Dir, p)
			if err != nil || rel == "." {
				return err
			}
			name, err := resolveParent(links, "/"+filepath.ToSlash(rel))
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			h := &tar.Header{
				Name:    "." + name,
				Mode:    int64(fi.Mode().Perm()),
				ModTime: fi.ModTime(),
				Format:  tar.FormatPAX,
			}
			if fi.Mode()&fs.ModeSetuid != 0 {
				h.Mode |= 0o4000
			}
			if fi.Mode()&fs.ModeSetgid != 0 {
				h.Mode |= 0o2000
			}
			if fi.Mode()&fs.ModeSticky != 0 {
				h.Mode |= 0o1000
			}
			switch {
			case d.IsDir():
				// A directory is followed through its own name too: the
				// layer's lib/ is the base's /lib -> usr/lib.
				full, err := resolveParent(links, path.Join(name, "x"))
				if err != nil {
					return err
				}
				name = path.Dir(full)
				h.Name = "." + name
				if dirs[name] {
					return nil // the base's directory, its owner and mode
				}
				dirs[name] = true
				// The host side keeps its directories private (0700); in
				// the guest a new directory is the usual 0755.
				h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				h.Typeflag, h.Linkname = tar.TypeSymlink, target
				links[name] = target
				delete(sizes, name)
			case fi.Mode().IsRegular():
				h.Typeflag, h.Size = tar.TypeReg, fi.Size()
				delete(links, name)
				sizes[name] = fi.Size()
			default:
				return fmt.Errorf("%s: not a file, directory or symlink", p)
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if h.Typeflag == tar.TypeReg {
				if err := copyInto(tw, p); err != nil {
					return err
				}
			}
			c.Entries++
			return nil
		})
		if err != nil {
			return c, fmt.Errorf("add %s: %w", l.Dir, err)
		}
	}
	if err := tw.Close(); err != nil {
		return c, fmt.Errorf("finish tar stream: %w", err)
	}
	for _, n := range sizes {
		c.Size += n
	}
	return c, nil
}

func copyInto(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// guestPath is a tar entry's name as a clean absolute path ("./usr/" ->
// "/usr").
func guestPath(name string) string {
	return path.Clean("/" + name)
}

// resolveParent follows the symlinks of links in name's parent
// directories, leaving its last element as it is.
func resolveParent(links map[string]string, name string) (string, error) {
	dir, base := path.Split(name)
	dir = path.Clean(dir)
	hops := 0
	parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	cur := "/"
	for i := 0; i < len(parts); i++ {
		if parts[i] == "" {
			continue
		}
		next := path.Join(cur, parts[i])
		target, ok := links[next]
		if !ok {
			cur = next
			continue
		}
		if hops++; hops > maxLinkHops {
			return "", fmt.Errorf("resolve %s: %w", name, errLinkLoop)
		}
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		// Resolve the target's own components again from the root.
		rest := append(strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/"), parts[i+1:]...)
		parts, cur, i = rest, "/", -1
	}
	return path.Join(cur, base), nil
}

var errLinkLoop = errors.New("too many levels of symbolic links")
