package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/store"
)

func runDown(ctx context.Context, e *env, args []string) error {
	home, t, err := instanceFlags(e, "down", "[-f FILE | NAME]", args, nil)
	if err != nil {
		return err
	}
	inst := home.Instance(t.name)
	if _, err := os.Stat(inst.Dir); os.IsNotExist(err) {
		fmt.Fprintf(e.stderr, "%s is not running\n", t.name)
		return nil
	}
	release, err := machine.Lock(inst)
	if err != nil {
		return err
	}
	defer release()
	return stopInstance(ctx, e, inst)
}

// stopInstance stops inst, saying each step; not running is no error.
func stopInstance(ctx context.Context, e *env, inst store.Instance) error {
	start := time.Now()
	err := machine.Stop(ctx, inst, e.log, func(s string) {
		fmt.Fprintf(e.stderr, "%s: %s\n", inst.Name, s)
	})
	if isNotRunning(err) {
		fmt.Fprintf(e.stderr, "%s is not running\n", inst.Name)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "%s stopped in %s; its data is kept (emu reset removes it)\n", inst.Name, progress.Dur(time.Since(start)))
	return nil
}

func runReset(ctx context.Context, e *env, args []string) error {
	home, t, err := instanceFlags(e, "reset", "[-f FILE | NAME]", args, nil)
	if err != nil {
		return err
	}
	inst := home.Instance(t.name)
	if _, err := os.Stat(inst.Dir); os.IsNotExist(err) {
		fmt.Fprintf(e.stderr, "%s has no state to reset\n", t.name)
		return nil
	}
	release, err := machine.Lock(inst)
	if err != nil {
		return err
	}
	defer release()
	if err := stopInstance(ctx, e, inst); err != nil {
		return err
	}
	if err := os.RemoveAll(inst.Dir); err != nil {
		return fmt.Errorf("reset %s: remove %s: %w", t.name, inst.Dir, err)
	}
	fmt.Fprintf(e.stderr, "%s reset: its data is gone; the image is kept\n", t.name)
	e.pruneDisks(home, false)
	return nil
}
