package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

func runLogs(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "logs", "[SERVICE] [-f] [--file FILE | --name NAME]")
	file := fs.String("file", spec.DefaultFile, "the stack `file`")
	name := fs.String("name", "", "the instance `name` (default: the stack file's)")
	follow := fs.Bool("f", false, "follow the serial console as it grows (until Ctrl-C)")
	lines := fs.Int("n", 200, "how many journal `lines` of a service")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{fmt.Errorf("logs takes at most one service, got %d", len(pos))}
	}
	home, err := store.Default()
	if err != nil {
		return err
	}
	var inst store.Instance
	if *name != "" {
		inst = home.Instance(*name)
	} else {
		t, err := resolve(home, *file, flagSet(fs, "file"), nil)
		if err != nil {
			return err
		}
		inst = home.Instance(t.name)
	}
	if len(pos) == 1 {
		if *follow {
			return usageError{errors.New("-f follows the serial console; a service's journal is shown once")}
		}
		if _, err := machine.RunningPID(inst); err != nil {
			return withHint{err: fmt.Errorf("%s is not running: a service's journal is read through its agent", inst.Name), hint: "emu up, or emu logs without a service for the console log"}
		}
		out, err := machine.Journal(ctx, inst.Agent(), pos[0], *lines)
		for _, l := range out {
			fmt.Fprintln(e.stdout, l)
		}
		return err
	}
	return catConsole(ctx, e.stdout, inst, *follow)
}

// catConsole prints the serial console log, and with follow keeps printing
// what the guest adds until ctx ends or QEMU exits.
func catConsole(ctx context.Context, w io.Writer, inst store.Instance, follow bool) error {
	f, err := os.Open(inst.Serial())
	if err != nil {
		return withHint{err: fmt.Errorf("no console log for %s: %w", inst.Name, err), hint: "emu up starts the instance"}
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil || !follow {
		return err
	}
	// The file gives no event on growth without inotify; a short interval
	// is plenty for a person reading a console.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if _, err := machine.RunningPID(inst); err != nil {
			return nil
		}
	}
}
