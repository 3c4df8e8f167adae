package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/qmp"
)

// A saved state is a guest's memory and devices, written by QEMU's
// migration to a stream, compressed with zstd. It is valid only together
// with the disk exactly as it was when the state was saved, and only for
// a QEMU that has the same machine: StateKey says what must match.

// StateKey is what a saved state depends on besides its disk. A state is
// restored only into a QEMU whose key is equal.
type StateKey struct {
	// Disk is the bundle disk's sha256: the base under the overlay.
	Disk string `json:"disk_sha256"`
	// QEMU is the binary, Version its --version line.
	QEMU    string `json:"qemu"`
	Version string `json:"qemu_version"`
	// Argv is QEMU's argv with what may differ between two starts of the
	// same machine made neutral: the overlay's, console's and runtime
	// config's paths, the name and the host ports. What stays is the
	// machine: type, accelerator, CPU model and count, memory, kernel,
	// devices.
	Argv []string `json:"argv"`
}

// Key is the StateKey of the guest cfg boots, on the bundle disk disk.
func Key(ctx context.Context, cfg Config, disk string) (StateKey, error) {
	bin := cfg.QEMU
	if bin == "" {
		var err error
		if bin, err = qemu.Binary(cfg.Arch); err != nil {
			return StateKey{}, err
		}
	}
	version, err := qemu.Version(ctx, bin)
	if err != nil {
		return StateKey{}, fmt.Errorf("qemu version: %w", err)
	}
	n := cfg
	n.Name = "emu"
	n.Drive.Path = "overlay"
	n.Serial = "console"
	n.Incoming = false
	n.Forwards = slices.Clone(cfg.Forwards)
	for i := range n.Forwards {
		n.Forwards[i].Host = 1 + i
	}
	n.FWCfg = slices.Clone(cfg.FWCfg)
	for i := range n.FWCfg {
		n.FWCfg[i].Path = "file"
	}
	argv, err := Args(n, qemu.Host{OS: runtime.GOOS, Arch: runtime.GOARCH})
	if err != nil {
		return StateKey{}, err
	}
	return StateKey{Disk: disk, QEMU: bin, Version: version, Argv: argv}, nil
}

// Mismatch says in one line why a state saved under k cannot be restored
// into a QEMU whose key is now; "" when it can.
func (k StateKey) Mismatch(now StateKey) string {
	switch {
	case k.Disk != now.Disk:
		return "the image changed since the state was saved"
	case k.QEMU != now.QEMU:
		return fmt.Sprintf("qemu changed since the state was saved (%s, now %s)", k.QEMU, now.QEMU)
	case k.Version != now.Version:
		return fmt.Sprintf("qemu changed since the state was saved (%q, now %q)", k.Version, now.Version)
	}
	for i := range max(len(k.Argv), len(now.Argv)) {
		var was, is string
		if i < len(k.Argv) {
			was = k.Argv[i]
		}
		if i < len(now.Argv) {
			is = now.Argv[i]
		}
		if was != is {
			return fmt.Sprintf("the machine changed since the state was saved (qemu argument %q, now %q)", was, is)
		}
	}
	return ""
}

// FileStamp identifies a file's content cheaply: its size and mtime.
type FileStamp struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
}

// Stamp is path's FileStamp.
func Stamp(path string) (FileStamp, error) {
	st, err := os.Stat(path)
	if err != nil {
		return FileStamp{}, err
	}
	return FileStamp{Size: st.Size(), ModTime: st.ModTime().UTC()}, nil
}

// StateMeta describes a saved state; it is written beside it, last, so a
// state without one is incomplete.
type StateMeta struct {
	Key   StateKey  `json:"key"`
	Saved time.Time `json:"saved"`
	// Size is the state file's size; RAM how much guest memory QEMU sent.
	Size int64 `json:"size"`
	RAM  int64 `json:"ram_bytes"`
	// SaveTime is the pause to the state safely on disk.
	SaveTime time.Duration `json:"save_ns"`
	// Disk is the overlay the state goes with, as it was once QEMU let
	// go of it; any other disk makes the state invalid.
	Disk FileStamp `json:"disk"`
}

// ReadStateMeta reads the meta file at path.
func ReadStateMeta(path string) (StateMeta, error) {
	var m StateMeta
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("parse %s: %w", path, err)
	}
	return m, nil
}

// WriteStateMeta writes m to path atomically, mode 0600.
func WriteStateMeta(path string, m StateMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return disk.WriteAtomic(path, 0o600, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// stateFD is the name the state's pipe has in QEMU's monitor (getfd).
const stateFD = "emu-state"

// prepareMigration turns on what emu's migrations need: an event at each
// state change (WaitMigration waits on them) and no bandwidth cap (QEMU's
// default, 128 MiB/s, is for a network; a paused guest going to a local
// file should go as fast as it can).
func prepareMigration(ctx context.Context, c *qmp.Client, outgoing bool) error {
	if err := c.SetMigrationCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		return err
	}
	if outgoing {
		return c.SetMigrationParameters(ctx, map[string]any{"max-bandwidth": int64(1) << 40})
	}
	return nil
}

// SaveInfo is what SaveState measured.
type SaveInfo struct {
	Size int64
	RAM  int64
	Took time.Duration
}

// SaveState pauses the guest behind c and writes its state (memory and
// devices) to path, atomically: a temporary name, synced, then renamed. On
// success QEMU has also flushed and let go of its disks: the guest stays
// paused, and `cont` (qmp.Client.Cont) would take them back and run it
// again. On failure the guest is still paused and nothing is at path.
func SaveState(ctx context.Context, c *qmp.Client, path string) (SaveInfo, error) {
	start := time.Now()
	var info SaveInfo
	if err := c.Stop(ctx); err != nil {
		return info, fmt.Errorf("pause the guest: %w", err)
	}
	if err := prepareMigration(ctx, c, true); err != nil {
		return info, fmt.Errorf("prepare the save: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return info, fmt.Errorf("create state file: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return info, err
	}
	written := make(chan error, 1)
	go func() { written <- compressTo(f, r) }()
	fail := func(err error) (SaveInfo, error) {
		// QEMU may still hold the pipe's write end: ours goes, and the
		// reader is cut off so the writer goroutine ends.
		_ = c.Execute(context.WithoutCancel(ctx), "closefd", map[string]string{"fdname": stateFD}, nil)
		w.Close()
		r.Close()
		<-written
		os.Remove(tmp)
		return info, err
	}
	err = c.GetFD(ctx, stateFD, w)
	w.Close()
	if err != nil {
		return fail(fmt.Errorf("hand the state pipe to qemu: %w", err))
	}
	if err := c.Migrate(ctx, "fd:"+stateFD); err != nil {
		return fail(fmt.Errorf("save the guest's state: %w", err))
	}
	m, err := c.WaitMigration(ctx)
	if err != nil {
		return fail(fmt.Errorf("save the guest's state: %w", err))
	}
	// QEMU closed its end at the migration's end: the writer sees EOF.
	select {
	case err = <-written:
	case <-ctx.Done():
		r.Close()
		<-written
		os.Remove(tmp)
		return info, fmt.Errorf("write state file: %w", ctx.Err())
	}
	r.Close()
	if err != nil {
		os.Remove(tmp)
		return info, fmt.Errorf("write state file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return info, fmt.Errorf("write state file: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return info, err
	}
	info.Size, info.Took = st.Size(), time.Since(start)
	if m.RAM != nil {
		info.RAM = m.RAM.Transferred
	}
	return info, nil
}

// compressTo writes r to f as one zstd stream at its fastest level, syncs
// and closes f.
func compressTo(f *os.File, r io.Reader) error {
	enc, err := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		f.Close()
		return err
	}
	_, err = io.Copy(enc, r)
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// RestoreError is a saved state that could not be restored: the guest
// never ran, its disk is as it was.
type RestoreError struct{ Err error }

func (e *RestoreError) Error() string { return "restore the saved state: " + e.Err.Error() }
func (e *RestoreError) Unwrap() error { return e.Err }

// RestoreState loads the state at path into a QEMU started with
// Config.Incoming, behind c. The guest is left paused (the state was saved
// from a paused guest): Cont runs it.
func RestoreState(ctx context.Context, c *qmp.Client, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dec, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer dec.Close()
	if err := prepareMigration(ctx, c, false); err != nil {
		return fmt.Errorf("prepare the restore: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	fed := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, dec)
		w.Close()
		fed <- err
	}()
	err = c.GetFD(ctx, stateFD, r)
	r.Close()
	if err == nil {
		err = c.MigrateIncoming(ctx, "fd:"+stateFD)
	}
	if err == nil {
		_, err = c.WaitMigration(ctx)
	}
	if err != nil {
		// A bad file explains a failed load better than QEMU's exit.
		w.Close()
		var ferr error
		select {
		case ferr = <-fed:
		case <-time.After(time.Second):
		}
		// A write that failed because QEMU is gone says nothing of the file.
		if ferr != nil && !errors.Is(ferr, os.ErrClosed) && !errors.Is(ferr, syscall.EPIPE) {
			return fmt.Errorf("read %s: %w", path, ferr)
		}
		return err
	}
	if err := <-fed; err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}
