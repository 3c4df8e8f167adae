package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

func runVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "verify", "[BUNDLE | -f FILE] [flags]")
	file := fs.String("f", spec.DefaultFile, "the stack `file` whose bundle in the image store to check")
	jsonOut := fs.Bool("json", false, "print events as JSON lines on stdout")
	accelFlag := fs.String("accel", "", "accelerator: kvm, hvf or tcg (default: probe)")
	timeout := fs.Duration("timeout", 0, "bound the wait for every service healthy (default 3m, scaled under tcg)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	var dir string
	switch {
	case len(pos) > 1:
		return usageError{fmt.Errorf("verify takes one bundle directory, got %d arguments", len(pos))}
	case len(pos) == 1:
		dir = pos[0]
	default:
		stack, err := loadStack(ctx, *file)
		if err != nil {
			return err
		}
		dir = filepath.Join(home.Images(), stack.Name)
	}
	if _, err := os.Stat(filepath.Join(dir, store.BundleManifest)); err != nil {
		return withHint{err: fmt.Errorf("no bundle at %s: %w", dir, err), hint: "build it first with `emu build`"}
	}
	man, err := bundle.Read(dir)
	if err != nil {
		return err
	}
	choice, err := checkHost(ctx, e, home, "", man.Arch, *accelFlag, false)
	if err != nil {
		return err
	}
	view, mode := e.newView(*jsonOut)
	t, err := machine.Verify(ctx, machine.VerifyOptions{
		Bundle: dir, DiskCache: home.DiskCache(), Accel: choice, WorkDir: home.Work(), LogDir: home.VerifyLogs(man.Name),
		Timeout: *timeout, Sink: view, Log: e.log,
	})
	view.Close()
	if err != nil {
		return err
	}
	if mode != progress.JSON {
		fmt.Fprintf(e.stderr, "verified %s: ready in %s (qemu start %s, boot to agent %s, services %s), power-off %s\n",
			dir, progress.Dur(t.Ready), progress.Dur(t.Start), progress.Dur(t.Hello), progress.Dur(t.Services), progress.Dur(t.PowerOff))
	}
	return nil
}
