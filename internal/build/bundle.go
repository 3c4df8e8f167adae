package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/guest"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// InputHash digests everything a bundle is made from: the base, the stack
// file's settings, every file's contents and the agent binary. Two builds
// with the same hash make the same image.
func InputHash(s *spec.Stack, agentBinary string) (string, error) {
	h := sha256.New()
	// v2: the disk is packed (disk.tar.zst); older bundles count as stale.
	fmt.Fprintf(h, "emu-bundle-v2\n")
	// connect is how the host reaches the stack, not part of the image:
	// changing it needs no new build.
	bare := *s
	bare.Connect = nil
	sj, err := json.Marshal(&bare)
	if err != nil {
		return "", err
	}
	h.Write(sj)
	// Contents by their place in the guest, not their host path: the same
	// inputs from another checkout hash the same.
	type input struct{ name, path string }
	inputs := []input{{proto.BinaryPath, agentBinary}}
	for _, f := range s.Files {
		inputs = append(inputs, input{f.Dst, s.FilePath(f)})
	}
	for i, entry := range s.Images {
		fmt.Fprintf(h, "\nimages[%d]\n", i)
		if err := hashTree(h, s.ImagePath(entry)); err != nil {
			return "", fmt.Errorf("hash image %s: %w", entry, err)
		}
	}
	for _, in := range inputs {
		p := in.path
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("hash input %s: %w", p, err)
		}
		fmt.Fprintf(h, "\n%s\n", in.name)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("hash input %s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// rawDisk is the build's raw disk in the work directory.
func (b *builder) rawDisk() string { return filepath.Join(b.work, store.WorkDisk) }

// compress converts the provisioned disk into the staged bundle's qcow2.
func (b *builder) compress(ctx context.Context) (stageResult, error) {
	if err := os.MkdirAll(b.staged, 0o700); err != nil {
		return stageResult{}, fmt.Errorf("create %s: %w", b.staged, err)
	}
	dst := filepath.Join(b.staged, store.BundleDisk)
	raw := b.rawDisk()
	if err := disk.AddJournal(ctx, b.opts.Runner, raw); err != nil {
		return stageResult{}, err
	}
	if err := disk.Pack(ctx, raw, dst, disk.PackLevel); err != nil {
		return stageResult{}, err
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Size: fi.Size()}, nil
}

// assemble writes the kernel, the initrd, the log so far and the manifest
// into the staged bundle, and returns its total size.
func (b *builder) assemble() (int64, error) {
	s := b.opts.Stack
	for src, name := range map[string]string{b.kernel: store.BundleKernel, b.initrd: store.BundleInitrd} {
		if _, err := os.Stat(filepath.Join(b.staged, name)); err == nil {
			continue
		}
		if err := copyFile(src, filepath.Join(b.staged, name), 0o600); err != nil {
			return 0, fmt.Errorf("add %s to bundle: %w", name, err)
		}
	}
	hash, err := InputHash(s, b.opts.AgentBinary)
	if err != nil {
		return 0, err
	}
	m := &b.man
	describeStack(m, s)
	m.InputHash, m.EmuVersion = hash, b.opts.Version
	m.Created = time.Now().UTC().Truncate(time.Second)
	b.logMu.Lock()
	err = b.logFile.Sync()
	b.logMu.Unlock()
	if err != nil {
		return 0, err
	}
	if err := copyFile(filepath.Join(b.logs, store.ProvisionLog), filepath.Join(b.staged, store.BundleLog), 0o600); err != nil {
		return 0, fmt.Errorf("add provision log to bundle: %w", err)
	}
	if m.Files == nil {
		m.Files = map[string]bundle.FileRecord{}
	}
	var total int64
	for _, name := range []string{store.BundleDisk, store.BundleKernel, store.BundleInitrd, store.BundleLog} {
		rec, ok := m.Files[name]
		if !ok || name == store.BundleLog {
			sum, size, err := disk.Digest(filepath.Join(b.staged, name))
			if err != nil {
				return 0, err
			}
			rec = bundle.FileRecord{SHA256: sum, Size: size}
			m.Files[name] = rec
		}
		total += rec.Size
	}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(b.staged, store.BundleManifest), append(mj, '\n'), 0o600); err != nil {
		return 0, fmt.Errorf("write manifest: %w", err)
	}
	return total, nil
}

// describeStack fills in what the manifest says about s: its name and
// architecture, how to boot it, and its services.
func describeStack(m *bundle.Manifest, s *spec.Stack) {
	m.Name, m.Arch = s.Name, s.Base.Arch
	m.Cmdline = guest.Cmdline(proto.Run, s.Base.Arch)
	m.VM = s.VM
	m.Connect = s.Connect
	m.Services = nil
	for _, name := range s.StartOrder() {
		svc := s.Services[name]
		m.Services = append(m.Services, bundle.ServiceRecord{
			Name: name, Unit: guest.UnitName(name, svc), After: svc.After, Ports: svc.Ports, Health: svc.Health,
		})
	}
}

// seedDiskCache hands the raw disk to the disk cache under the packed
// disk's digest: it is what the packed one unpacks to, so no boot of this
// bundle on this host needs to unpack it.
func (b *builder) seedDiskCache() {
	cached := filepath.Join(b.opts.Home.DiskCache(), b.man.Files[store.BundleDisk].SHA256)
	if _, err := os.Stat(filepath.Join(cached, disk.PackedName)); err == nil {
		return
	}
	if err := os.MkdirAll(cached, 0o700); err == nil {
		if err := os.Rename(b.rawDisk(), filepath.Join(cached, disk.PackedName)); err != nil {
			os.Remove(cached)
		}
	}
}

// bundle finishes the staged bundle (the log and manifest now complete)
// and swaps it into place in one step.
func (b *builder) bundle(ctx context.Context) (stageResult, error) {
	total, err := b.assemble()
	if err != nil {
		return stageResult{}, err
	}
	for _, name := range []string{store.BundleDisk, store.BundleKernel, store.BundleInitrd, store.BundleLog, store.BundleManifest} {
		if err := disk.SyncFile(filepath.Join(b.staged, name)); err != nil {
			return stageResult{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return stageResult{}, err
	}
	if err := disk.SwapDir(b.staged, b.final); err != nil {
		return stageResult{}, err
	}
	b.seedDiskCache()
	return stageResult{Size: total}, nil
}
