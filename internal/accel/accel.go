// Package accel chooses the QEMU accelerator for a guest on this host.
//
// A /dev/kvm that opens proves little: on our own machines it opens, QMP
// reports KVM enabled, and guests still hang or abort. So on Linux the answer
// comes from a probe guest booted the way we boot real guests (-accel kvm
// -cpu host), and the answer is cached per boot and per QEMU binary.
package accel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/qemu"
)

// Choice is the accelerator to use and why.
type Choice struct {
	Accel qemu.Accel
	// Reason is one line: why this accelerator, e.g.
	// "kvm: /dev/kvm opens but a probe guest did not finish within 2s".
	Reason string
	// TimeoutScale multiplies guest-side timeouts: 1 for kvm and hvf.
	TimeoutScale float64
	// TBSize is TCG's translation cache in MiB: 0 is qemu.DefaultTBSize,
	// -1 QEMU's own default (EMU_TCG_TB_SIZE, read by the CLI).
	TBSize int
	// cache is the probe's cache entry and file, for FallBack.
	cache     cacheEntry
	cachePath string
}

// FallBack is the choice once a real guest did not start under c's KVM
// (it never reached its agent): TCG. The probe guest can run where a real
// kernel hangs (seen on our own machines: a boot sector runs under a
// nested /dev/kvm on which Linux never prints a line), so the truth is the
// real boot. The probe's cache remembers it for this boot of the host, so
// the next command goes straight to TCG.
func (c Choice) FallBack(why string) Choice {
	t := choice(qemu.TCG, "tcg: "+why)
	t.TBSize = c.TBSize
	if c.cachePath != "" {
		e := c.cache
		e.KVMWorks, e.Reason = false, why
		if b, err := json.MarshalIndent(e, "", "  "); err == nil {
			writeFileAtomic(c.cachePath, append(b, '\n')) // best effort
		}
	}
	return t
}

// Scale stretches a guest-side allowance by TimeoutScale (never below 1):
// the one way every boot, bake and stop deadline is adjusted for the
// accelerator.
func (c Choice) Scale(d time.Duration) time.Duration {
	return Scale(d, c.TimeoutScale)
}

// Scale stretches d by scale, never by less than 1 (an unset scale).
func Scale(d time.Duration, scale float64) time.Duration {
	return time.Duration(float64(d) * max(scale, 1))
}

// TCGTimeoutScale is how much slower we assume a TCG guest runs.
const TCGTimeoutScale = 8

// ProbeFunc boots the probe guest for a guest of arch with bin under accel
// and returns nil when it ran to completion, or an error saying what
// happened instead.
type ProbeFunc func(ctx context.Context, arch, bin string, accel qemu.Accel) error

// Chooser holds what Choose depends on; the zero value uses the real host.
type Chooser struct {
	GOOS, GOARCH string // default runtime.GOOS, runtime.GOARCH
	// CacheDir holds accel.json; "" means os.UserCacheDir()/emu. Caching is
	// skipped (not an error) when no cache dir can be found or written.
	CacheDir string
	// KVMDevice is opened read-write to see if KVM is there; default /dev/kvm.
	KVMDevice string
	// BootIDFile keys the cache to this boot; default /proc/sys/kernel/random/boot_id.
	BootIDFile string
	// LookPath finds the QEMU binary; default exec.LookPath.
	LookPath func(string) (string, error)
	// Probe runs the probe guest; default Probe.
	Probe ProbeFunc
	// ProbeTimeout bounds the probe; default 2s.
	ProbeTimeout time.Duration
}

// Choose picks the accelerator for a guest of guestArch on this host.
// override is "", "tcg", "kvm" or "hvf"; a non-empty one is used as long as
// the host can run it at all.
func Choose(ctx context.Context, guestArch, override string) (Choice, error) {
	return Chooser{}.Choose(ctx, guestArch, override)
}

// Choose is the package-level Choose with c's dependencies.
func (c Chooser) Choose(ctx context.Context, guestArch, override string) (Choice, error) {
	c = c.withDefaults()
	if _, err := qemu.Binary(guestArch); err != nil {
		return Choice{}, err
	}
	host := qemu.Host{OS: c.GOOS, Arch: c.GOARCH}
	if override != "" {
		a := qemu.Accel(override)
		switch a {
		case qemu.TCG, qemu.KVM, qemu.HVF:
		default:
			return Choice{}, fmt.Errorf("accel %q: unknown (want tcg, kvm or hvf)", override)
		}
		if err := qemu.AccelPossible(a, guestArch, host); err != nil {
			return Choice{}, err
		}
		return choice(a, string(a)+": chosen by --accel"), nil
	}

	switch {
	case guestArch != c.GOARCH:
		return choice(qemu.TCG, fmt.Sprintf("tcg: guest %s differs from host %s, no hardware acceleration", guestArch, c.GOARCH)), nil
	case c.GOOS == "darwin":
		return choice(qemu.HVF, "hvf: macOS host, guest arch matches"), nil
	case c.GOOS != "linux":
		return choice(qemu.TCG, "tcg: no hardware accelerator supported on "+c.GOOS), nil
	}

	f, err := os.OpenFile(c.KVMDevice, os.O_RDWR, 0)
	if err != nil {
		return choice(qemu.TCG, fmt.Sprintf("tcg: %s does not open read-write (%v)", c.KVMDevice, unwrapPath(err))), nil
	}
	f.Close()
	bin, err := qemu.Binary(guestArch)
	if err != nil {
		return Choice{}, err
	}
	if p, err := c.LookPath(bin); err == nil {
		bin = p
	} else {
		return Choice{}, fmt.Errorf("find %s to probe kvm: %w (install %s, or pass --accel)", bin, err, map[string]string{"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}[guestArch])
	}

	ok, why := c.probeCached(ctx, guestArch, bin)
	if ok {
		k := choice(qemu.KVM, "kvm: "+why)
		if key, keyOK := c.cacheKey(bin); keyOK && c.CacheDir != "" {
			k.cache, k.cachePath = key, filepath.Join(c.CacheDir, "accel.json")
		}
		return k, nil
	}
	return choice(qemu.TCG, "tcg: "+why), nil
}

func choice(a qemu.Accel, reason string) Choice {
	scale := 1.0
	if a == qemu.TCG {
		scale = TCGTimeoutScale
	}
	return Choice{Accel: a, Reason: reason, TimeoutScale: scale}
}

func (c Chooser) withDefaults() Chooser {
	if c.GOOS == "" {
		c.GOOS = runtime.GOOS
	}
	if c.GOARCH == "" {
		c.GOARCH = runtime.GOARCH
	}
	if c.KVMDevice == "" {
		c.KVMDevice = "/dev/kvm"
	}
	if c.BootIDFile == "" {
		c.BootIDFile = "/proc/sys/kernel/random/boot_id"
	}
	if c.LookPath == nil {
		c.LookPath = exec.LookPath
	}
	if c.Probe == nil {
		c.Probe = Probe
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = 2 * time.Second
	}
	if c.CacheDir == "" {
		if d, err := os.UserCacheDir(); err == nil {
			c.CacheDir = filepath.Join(d, "emu")
		}
	}
	return c
}

// cacheEntry is accel.json: the kvm probe's outcome for one boot and one
// QEMU binary. A reboot, or a QEMU upgrade, probes again.
type cacheEntry struct {
	BootID    string    `json:"boot_id"`
	QEMU      string    `json:"qemu"`
	QEMUMtime time.Time `json:"qemu_mtime"`
	KVMWorks  bool      `json:"kvm_works"`
	Reason    string    `json:"reason"`
}

// probeCached returns whether KVM works and a reason without the accel
// prefix.
func (c Chooser) probeCached(ctx context.Context, arch, bin string) (bool, string) {
	key, keyOK := c.cacheKey(bin)
	path := ""
	if c.CacheDir != "" && keyOK {
		path = filepath.Join(c.CacheDir, "accel.json")
		if b, err := os.ReadFile(path); err == nil {
			var e cacheEntry
			if json.Unmarshal(b, &e) == nil && e.BootID == key.BootID && e.QEMU == key.QEMU && e.QEMUMtime.Equal(key.QEMUMtime) {
				return e.KVMWorks, e.Reason + " (cached for this boot)"
			}
		}
	}

	pctx, cancel := context.WithTimeout(ctx, c.ProbeTimeout)
	err := c.Probe(pctx, arch, bin, qemu.KVM)
	cancel()
	if ctx.Err() != nil {
		// Our caller gave up; that says nothing about KVM, so cache nothing.
		return false, fmt.Sprintf("kvm probe interrupted (%v)", ctx.Err())
	}
	e := key
	if err == nil {
		e.KVMWorks, e.Reason = true, c.KVMDevice+" opens and a probe guest ran under it"
	} else if errors.Is(err, context.DeadlineExceeded) {
		e.Reason = fmt.Sprintf("%s opens but a probe guest did not finish within %s", c.KVMDevice, c.ProbeTimeout)
	} else {
		e.Reason = fmt.Sprintf("%s opens but a probe guest (-cpu host) failed under it: %v", c.KVMDevice, err)
	}
	if path != "" {
		if b, err := json.MarshalIndent(e, "", "  "); err == nil {
			writeFileAtomic(path, append(b, '\n')) // best effort: a failed write only costs a re-probe
		}
	}
	return e.KVMWorks, e.Reason
}

func (c Chooser) cacheKey(bin string) (cacheEntry, bool) {
	id, err := os.ReadFile(c.BootIDFile)
	if err != nil {
		return cacheEntry{}, false
	}
	st, err := os.Stat(bin)
	if err != nil {
		return cacheEntry{}, false
	}
	return cacheEntry{BootID: strings.TrimSpace(string(id)), QEMU: bin, QEMUMtime: st.ModTime().UTC()}, true
}

func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".accel-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
