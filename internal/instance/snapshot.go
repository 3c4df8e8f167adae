package instance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/qmp"
	"github.com/emu-dev/emu/internal/store"
)

// How an up started the guest (Info.Start).
const (
	StartCold     = "cold"     // booted
	StartResumed  = "resumed"  // from the instance's own saved state
	StartTemplate = "template" // a fresh instance, from the image's ready snapshot
)

// Template file names, in TemplateDir.
const (
	templateState   = "state.zst"
	templateMeta    = "state.json"
	templateOverlay = "overlay.qcow2"
)

// TemplateDir holds the ready snapshot of the bundle disk sum: the state of
// a guest that had just become ready, and the overlay that goes with it.
// It lives in the disk cache entry of that disk, so it goes when the disk
// is pruned.
func TemplateDir(diskCache, sum string) string {
	return filepath.Join(diskCache, sum, "template")
}

// source is a saved state an up resumes from.
type source struct {
	kind    string // StartResumed or StartTemplate
	state   string
	overlay string // a template's overlay, copied to the instance's
}

// pickSource says what up should resume from: the instance's own saved
// state, or for an instance with no data yet, the image's ready snapshot;
// nil to boot cold. why says, in one line, why a saved state that exists
// is not used (it is removed then).
func pickSource(o UpOptions, key machine.StateKey, haveOverlay bool) (src *source, why string) {
	inst := o.Instance
	if o.Cold {
		if _, ok := Suspended(inst); ok {
			return nil, "--cold: discarding the saved state; the guest boots as after a power cut"
		}
		return nil, ""
	}
	if b, err := os.ReadFile(inst.SuspendFailed()); err == nil {
		why = "the last suspend did not finish (" + strings.TrimSpace(string(b)) + "): booting cold"
	}
	_, serr := os.Stat(inst.SavedState())
	meta, merr := machine.ReadStateMeta(inst.SavedMeta())
	switch {
	case serr != nil && merr != nil:
		// No saved state.
	case serr != nil:
		why = "the saved state's file is missing: booting cold"
	case merr != nil:
		why = "the saved state is incomplete (" + merr.Error() + "): booting cold"
	case !haveOverlay:
		why = "the saved state has no disk to go with: booting cold"
	default:
		stamp, err := machine.Stamp(inst.Overlay())
		switch m := meta.Key.Mismatch(key); {
		case m != "":
			why = m + ": booting cold"
		case err != nil || !stamp.ModTime.Equal(meta.Disk.ModTime) || stamp.Size != meta.Disk.Size:
			why = "the instance's disk changed since the state was saved: booting cold"
		default:
			return &source{kind: StartResumed, state: inst.SavedState()}, ""
		}
	}
	if haveOverlay || o.NoTemplate || o.DiskCache == "" {
		return nil, why
	}
	if t, ok := validTemplate(o.DiskCache, key); ok {
		return t, why
	}
	return nil, why
}

// validTemplate is the image's ready snapshot when there is one that fits
// key.
func validTemplate(diskCache string, key machine.StateKey) (*source, bool) {
	dir := TemplateDir(diskCache, key.Disk)
	meta, err := machine.ReadStateMeta(filepath.Join(dir, templateMeta))
	if err != nil || meta.Key.Mismatch(key) != "" {
		return nil, false
	}
	stamp, err := machine.Stamp(filepath.Join(dir, templateOverlay))
	if err != nil || stamp.Size != meta.Disk.Size || !stamp.ModTime.Equal(meta.Disk.ModTime) {
		return nil, false
	}
	if _, err := os.Stat(filepath.Join(dir, templateState)); err != nil {
		return nil, false
	}
	return &source{kind: StartTemplate, state: filepath.Join(dir, templateState), overlay: filepath.Join(dir, templateOverlay)}, true
}

// removeSavedState removes the instance's saved state: done by every boot
// that is not a resume, so a state can never be restored over a disk that
// moved on.
func removeSavedState(inst store.Instance) error {
	var errs []error
	// The state's temporary file (SaveState) and the meta's (disk.WriteAtomic).
	tmps, _ := filepath.Glob(filepath.Join(inst.Dir, "."+filepath.Base(inst.SavedMeta())+".tmp*"))
	for _, p := range append([]string{inst.SavedMeta(), inst.SavedState(), inst.SavedState() + ".tmp", inst.SuspendFailed()}, tmps...) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Suspended reports the instance's saved state, when it has a complete one.
func Suspended(inst store.Instance) (machine.StateMeta, bool) {
	meta, err := machine.ReadStateMeta(inst.SavedMeta())
	if err != nil {
		return meta, false
	}
	if _, err := os.Stat(inst.SavedState()); err != nil {
		return meta, false
	}
	return meta, true
}

// ErrNotResumable: the instance's guest cannot be suspended (its agent
// predates resume, or it was started by an older emu).
var ErrNotResumable = errors.New("its guest agent cannot resume (image built by an older emu)")

// Suspend saves the running instance's state (memory and devices) beside
// its overlay and ends its QEMU: the next up resumes it. When the save
// fails with QEMU still running, the guest runs on and the error says so:
// the caller powers it off instead. When QEMU died during the save, the
// guest is gone as after a power cut, and the next up boots cold and says
// why.
func Suspend(ctx context.Context, inst store.Instance, log *slog.Logger, sink event.Sink) (machine.StateMeta, error) {
	say := func(msg string) {
		if sink != nil {
			sink.Emit(event.New(event.Log, inst.Name, msg))
		}
	}
	var meta machine.StateMeta
	pid, err := RunningPID(inst)
	if err != nil {
		return meta, err
	}
	info, err := ReadInfo(inst)
	if err != nil {
		return meta, fmt.Errorf("suspend %s: read instance state: %w", inst.Name, err)
	}
	if !info.Resumable || len(info.Key.Argv) == 0 {
		return meta, ErrNotResumable
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := qmp.Dial(qctx, inst.QMP(), qmp.WithLogger(log))
	cancel()
	if err != nil {
		return meta, fmt.Errorf("suspend %s: %w", inst.Name, err)
	}
	defer c.Close()
	// A suspend interrupted before (emu killed) may have left the guest
	// paused, its disks let go of: take them back first.
	if _, err := unpause(ctx, c); err != nil {
		return meta, fmt.Errorf("suspend %s: %w", inst.Name, err)
	}
	say("saving the guest's state")
	sctx, cancel := context.WithTimeout(ctx, accelScale(info, 5*time.Minute))
	defer cancel()
	saved, err := machine.SaveState(sctx, c, inst.SavedState())
	if err != nil {
		// A QEMU killed during the save may take a moment to be gone
		// (its memory unmapped): wait a little before calling it alive.
		if !waitExit(ctx, pid, 2*time.Second) {
			// Still there: run the guest on; the caller powers it off.
			if cerr := c.Cont(context.WithoutCancel(ctx)); cerr != nil {
				err = errors.Join(err, fmt.Errorf("run the guest again: %w", cerr))
			}
			return meta, fmt.Errorf("suspend %s: %w", inst.Name, err)
		}
		_ = os.WriteFile(inst.SuspendFailed(), []byte(err.Error()+"\n"), 0o600)
		clearRuntime(inst)
		return meta, fmt.Errorf("suspend %s: qemu exited during the save (%w); the guest stopped as at a power cut, and the next up boots cold", inst.Name, err)
	}
	// The state is on disk and QEMU has let go of the disks: end it.
	if err := c.Quit(ctx); err != nil && log != nil {
		log.Debug("qmp quit", "err", err)
	}
	if !waitExit(ctx, pid, 10*time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		waitExit(ctx, pid, 5*time.Second)
	}
	clearRuntime(inst)
	stamp, err := machine.Stamp(inst.Overlay())
	if err != nil {
		return meta, fmt.Errorf("suspend %s: %w", inst.Name, err)
	}
	meta = machine.StateMeta{
		Key: info.Key, Saved: time.Now().UTC(), Size: saved.Size, RAM: saved.RAM, SaveTime: saved.Took, Disk: stamp,
	}
	if err := machine.WriteStateMeta(inst.SavedMeta(), meta); err != nil {
		return meta, fmt.Errorf("suspend %s: %w", inst.Name, err)
	}
	return meta, nil
}

// Unpause runs the guest again when it is paused: by an interrupted
// suspend (emu killed during the save), or by a write that found the
// host's filesystem full (its writes are retried). It reports whether it
// had to.
func Unpause(ctx context.Context, inst store.Instance) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, inst.QMP())
	if err != nil {
		return false, err
	}
	defer c.Close()
	return unpause(ctx, c)
}

func unpause(ctx context.Context, c *qmp.Client) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || st.Running {
		return false, err
	}
	switch st.Status {
	case "paused", "postmigrate", "finish-migrate", "io-error":
		if err := c.Cont(ctx); err != nil {
			return false, fmt.Errorf("the guest is %s and does not run again: %w", st.Status, err)
		}
		return true, nil
	}
	return false, nil
}

// accelScale scales d for the accelerator the instance runs under.
func accelScale(info Info, d time.Duration) time.Duration {
	if info.TimeoutScale > 1 {
		return time.Duration(float64(d) * info.TimeoutScale)
	}
	return d
}

// captureTemplate saves the running instance, which has just become ready
// on a fresh overlay, as its image's ready snapshot: its state, then a copy
// of its overlay, both taken while the guest is paused; the guest then
// runs on. The template is built in a temporary directory and renamed into
// place whole.
func captureTemplate(ctx context.Context, o UpOptions, key machine.StateKey) (machine.SaveInfo, error) {
	inst := o.Instance
	var saved machine.SaveInfo
	dir := TemplateDir(o.DiskCache, key.Disk)
	tmp := dir + ".tmp-" + randomSuffix()
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return saved, err
	}
	defer os.RemoveAll(tmp)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := qmp.Dial(qctx, inst.QMP(), qmp.WithLogger(o.Log))
	cancel()
	if err != nil {
		return saved, err
	}
	defer c.Close()
	// Whatever happens, the user's guest runs on.
	defer func() {
		if err := c.Cont(context.WithoutCancel(ctx)); err != nil {
			o.Log.Warn("run the guest again after the snapshot", "err", err)
		}
	}()
	saved, err = machine.SaveState(ctx, c, filepath.Join(tmp, templateState))
	if err != nil {
		return saved, err
	}
	// The migration flushed the overlay and QEMU let go of it: the copy
	// is the disk the state goes with.
	ov := filepath.Join(tmp, templateOverlay)
	if err := copyFile(inst.Overlay(), ov); err != nil {
		return saved, err
	}
	stamp, err := machine.Stamp(ov)
	if err != nil {
		return saved, err
	}
	meta := machine.StateMeta{Key: key, Saved: time.Now().UTC(), Size: saved.Size, RAM: saved.RAM, SaveTime: saved.Took, Disk: stamp}
	if err := machine.WriteStateMeta(filepath.Join(tmp, templateMeta), meta); err != nil {
		return saved, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return saved, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return saved, err
	}
	return saved, nil
}

// copyFile copies src to dst atomically, mode 0600 (disk.WriteAtomic).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := disk.WriteAtomic(dst, 0o600, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	}); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// DiskFull explains a guest QEMU paused on a write error ("io-error"): the
// overlay's filesystem is full (werror=enospc), so the write waits.
func DiskFull(inst store.Instance) string {
	free := "unknown space"
	var st syscall.Statfs_t
	if err := syscall.Statfs(inst.Dir, &st); err == nil {
		free = progress.Humanize(int64(st.Bavail) * int64(st.Bsize))
	}
	return fmt.Sprintf("the guest is paused: a write to its disk found no space on the filesystem of %s (%s free); "+
		"nothing is lost: free space there, then run emu up to let it go on", inst.Dir, free)
}
