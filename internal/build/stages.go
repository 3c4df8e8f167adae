package build

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/guest"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/store"
	"github.com/klauspost/compress/zstd"
)

// inject lays the agent, emu's guest files and the stack's own files over
// the base tree, as one tar stream for mke2fs: nothing is unpacked, so a
// user without privileges makes the same disk as root (owners and device
// nodes stay as the tarball has them). The kernel and initrd move out of
// the tree: the bundle carries them beside the disk, so the disk need not.
func (b *builder) inject(ctx context.Context) (stageResult, error) {
	tree := filepath.Join(b.work, store.WorkTree)
	if err := os.MkdirAll(tree, 0o700); err != nil {
		return stageResult{}, err
	}
	if err := copyFile(b.opts.AgentBinary, filepath.Join(tree, proto.BinaryPath), 0o755); err != nil {
		return stageResult{}, fmt.Errorf("add agent: %w", err)
	}
	files, err := guest.Render(b.opts.Stack, b.imageIDs)
	if err != nil {
		return stageResult{}, err
	}
	if err := guest.Write(tree, files); err != nil {
		return stageResult{}, err
	}
	for i, f := range b.opts.Stack.Files {
		src := b.opts.Stack.FilePath(f)
		mode := os.FileMode(f.Mode)
		if mode == 0 {
			fi, err := os.Stat(src)
			if err != nil {
				return stageResult{}, fmt.Errorf("add file %s: %w", f.Src, err)
			}
			mode = fi.Mode().Perm()
		}
		if err := copyFile(src, filepath.Join(tree, f.Dst), mode); err != nil {
			return stageResult{}, fmt.Errorf("add file %s as %s: %w", f.Src, f.Dst, err)
		}
		if f.Optimize.Enabled {
			if err := b.optimizeFile(ctx, tree, i, f, src, mode); err != nil {
				return stageResult{}, err
			}
		}
	}
	size, err := b.compose(ctx, tree)
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Size: size, Facts: map[string]string{"files": strconv.Itoa(len(b.opts.Stack.Files))}}, nil
}

// compose writes the base tarball with tree laid over it to the work
// directory's root.tar, taking the kernels and initrds out on the way.
func (b *builder) compose(ctx context.Context, tree string) (int64, error) {
	in, err := os.Open(b.tarball)
	if err != nil {
		return 0, fmt.Errorf("open base tarball: %w", err)
	}
	defer in.Close()
	zr, err := zstd.NewReader(in)
	if err != nil {
		return 0, fmt.Errorf("read base tarball %s: %w", b.tarball, err)
	}
	defer zr.Close()
	boot := filepath.Join(b.work, "boot")
	if err := os.MkdirAll(boot, 0o700); err != nil {
		return 0, err
	}
	defer os.RemoveAll(boot)
	var kernels []string
	layer := disk.Layer{
		Dir: tree,
		Take: func(name string) bool {
			dir, base := path.Split(name)
			return dir == "/boot/" && (strings.HasPrefix(base, "vmlinuz-") || strings.HasPrefix(base, "initrd.img-"))
		},
		Save: func(name string, r io.Reader) error {
			if strings.HasPrefix(path.Base(name), "vmlinuz-") {
				kernels = append(kernels, path.Base(name))
			}
			return writeFrom(filepath.Join(boot, path.Base(name)), r)
		},
	}
	// A work file, read once by mke2fs and removed: no fsync, no rename.
	out, err := os.OpenFile(filepath.Join(b.work, store.WorkRootTar), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	c, err := disk.Compose(ctx, zr, layer, bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("compose the root tree of %s: %w", b.tarball, err)
	}
	if err := os.RemoveAll(tree); err != nil {
		return 0, fmt.Errorf("remove %s: %w", tree, err)
	}
	kernel, initrd, err := findKernel(boot, kernels)
	if err != nil {
		return 0, err
	}
	b.kernel = filepath.Join(b.work, store.WorkKernel)
	b.initrd = filepath.Join(b.work, store.WorkInitrd)
	for src, dst := range map[string]string{kernel: b.kernel, initrd: b.initrd} {
		if err := moveFile(src, dst); err != nil {
			return 0, err
		}
	}
	return c.Size, nil
}

func writeFrom(dst string, r io.Reader) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return f.Close()
}

// disk writes the tree into a sparse raw ext4 disk of vm.disk bytes.
func (b *builder) disk(ctx context.Context) (stageResult, error) {
	raw := b.rawDisk()
	root := filepath.Join(b.work, store.WorkRootTar)
	if err := disk.MakeExt4FromTar(ctx, b.opts.Runner, root, raw, int64(b.opts.Stack.VM.Disk)); err != nil {
		return stageResult{}, err
	}
	// The tree is in the disk now; free its space before the guest boots.
	if err := os.Remove(root); err != nil {
		return stageResult{}, fmt.Errorf("remove %s: %w", root, err)
	}
	alloc, err := disk.Allocated(raw)
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Size: alloc}, nil
}

// findKernel returns the newest of kernels (vmlinuz-VERSION files in
// boot) and its initrd.
func findKernel(boot string, kernels []string) (kernel, initrd string, err error) {
	if len(kernels) == 0 {
		return "", "", fmt.Errorf("find kernel: no /boot/vmlinuz-* in the tree (is base.kernel a kernel package?)")
	}
	sort.Strings(kernels)
	kernel = filepath.Join(boot, kernels[len(kernels)-1])
	initrd = filepath.Join(boot, "initrd.img-"+strings.TrimPrefix(kernels[len(kernels)-1], "vmlinuz-"))
	if _, err := os.Stat(initrd); err != nil {
		return "", "", fmt.Errorf("find initrd for %s: %w (the tree needs initramfs-tools)", path.Base(kernel), err)
	}
	return kernel, initrd, nil
}

func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	return nil
}

// copyFile copies src to dst with mode, via a temporary name.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	tmp := dst + ".emu-tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}
