package build

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/guest"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/store"
)

// inject unpacks the base tree and adds the agent, emu's guest files and
// the stack's own files. The kernel and initrd move out of the tree: the
// bundle carries them beside the disk, so the disk need not.
func (b *builder) inject(ctx context.Context) (stageResult, error) {
	tree := filepath.Join(b.work, store.WorkTree)
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return stageResult{}, err
	}
	if _, err := b.opts.Runner.Run(ctx, "tar", "--zstd", "-xpf", b.tarball, "-C", tree, "--numeric-owner"); err != nil {
		return stageResult{}, fmt.Errorf("unpack %s: %w", b.tarball, err)
	}
	kernel, initrd, err := findKernel(tree)
	if err != nil {
		return stageResult{}, err
	}
	b.kernel = filepath.Join(b.work, store.WorkKernel)
	b.initrd = filepath.Join(b.work, store.WorkInitrd)
	for src, dst := range map[string]string{kernel: b.kernel, initrd: b.initrd} {
		if err := moveFile(src, dst); err != nil {
			return stageResult{}, err
		}
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
	size, err := treeSize(tree)
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Size: size, Facts: map[string]string{"files": strconv.Itoa(len(b.opts.Stack.Files))}}, nil
}

// disk writes the tree into a sparse raw ext4 disk of vm.disk bytes.
func (b *builder) disk(ctx context.Context) (stageResult, error) {
	raw := b.rawDisk()
	tree := filepath.Join(b.work, store.WorkTree)
	if err := disk.MakeExt4(ctx, b.opts.Runner, tree, raw, int64(b.opts.Stack.VM.Disk)); err != nil {
		return stageResult{}, err
	}
	// The tree is in the disk now; free its space before the guest boots.
	if err := os.RemoveAll(tree); err != nil {
		return stageResult{}, fmt.Errorf("remove tree: %w", err)
	}
	alloc, err := disk.Allocated(raw)
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Size: alloc}, nil
}

// findKernel returns the tree's newest kernel and its initrd.
func findKernel(tree string) (kernel, initrd string, err error) {
	ks, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if len(ks) == 0 {
		return "", "", fmt.Errorf("find kernel: no /boot/vmlinuz-* in the tree (is base.kernel a kernel package?)")
	}
	sort.Strings(ks)
	kernel = ks[len(ks)-1]
	initrd = filepath.Join(tree, "boot", "initrd.img-"+strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-"))
	if _, err := os.Stat(initrd); err != nil {
		return "", "", fmt.Errorf("find initrd for %s: %w (the tree needs initramfs-tools)", filepath.Base(kernel), err)
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
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
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

// treeSize is the apparent size of the regular files under root.
func treeSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure tree %s: %w", root, err)
	}
	return n, nil
}
