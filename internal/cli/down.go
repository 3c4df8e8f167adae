package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/store"
)

// stopReporter reports down and reset as events: with --json, every event
// as a JSON line on stdout; otherwise the steps as "NAME: step" lines and
// the outcome as a line on stderr.
func (e *env) stopReporter(jsonOut bool) event.Sink {
	if jsonOut {
		enc := event.NewEncoder(e.stdout)
		return event.SinkFunc(func(ev event.Event) { _ = enc.Encode(ev) })
	}
	return event.SinkFunc(func(ev event.Event) {
		switch ev.Kind {
		case event.Log:
			if ev.Name == "" {
				fmt.Fprintln(e.stderr, ev.Msg)
				break
			}
			fmt.Fprintf(e.stderr, "%s: %s\n", ev.Name, ev.Msg)
		case event.Done:
			fmt.Fprintln(e.stderr, ev.Msg)
		}
		// failed: the error is rendered once, by Main.
	})
}

func runDown(ctx context.Context, e *env, args []string) error {
	var jsonOut, poweroff *bool
	home, t, err := instanceFlags(ctx, e, "down", "[-f FILE | NAME] [--poweroff] [--json]", args, func(fs *flag.FlagSet) {
		jsonOut = fs.Bool("json", false, "print events as JSON lines on stdout")
		poweroff = fs.Bool("poweroff", false, "shut the guest down cleanly instead of suspending it (the next up boots)")
	})
	if err != nil {
		return err
	}
	sink := e.stopReporter(*jsonOut)
	inst := home.Instance(t.name)
	if _, err := os.Stat(inst.Dir); os.IsNotExist(err) {
		sink.Emit(event.New(event.Done, t.name, t.name+" is not running"))
		return nil
	}
	release, err := instance.Lock(inst)
	if err != nil {
		return failed(sink, t.name, err)
	}
	defer release()
	stop := suspendInstance
	if *poweroff {
		stop = stopInstance
	}
	msg, err := stop(ctx, e, inst, sink)
	if err != nil {
		return failed(sink, t.name, err)
	}
	sink.Emit(event.New(event.Done, t.name, msg))
	return nil
}

// suspendInstance saves inst's state and ends its QEMU, so the next up
// resumes it; a guest that cannot be suspended is powered off instead,
// saying why.
func suspendInstance(ctx context.Context, e *env, inst store.Instance, sink event.Sink) (string, error) {
	start := time.Now()
	meta, err := instance.Suspend(ctx, inst, e.log, sink)
	if isNotRunning(err) {
		return notRunning(inst), nil
	}
	if err != nil {
		if _, perr := instance.RunningPID(inst); perr != nil {
			return "", err // QEMU is gone: nothing to power off
		}
		if ctx.Err() != nil {
			return "", err
		}
		sink.Emit(event.New(event.Log, inst.Name, "cannot suspend: "+err.Error()+"; powering off instead"))
		return stopInstance(ctx, e, inst, sink)
	}
	return fmt.Sprintf("%s suspended in %s (state %s); emu up resumes it, its data is kept",
		inst.Name, progress.Dur(time.Since(start)), progress.Humanize(meta.Size)), nil
}

// notRunning says that inst is not running, and whether it is suspended.
func notRunning(inst store.Instance) string {
	if _, ok := instance.Suspended(inst); ok {
		return inst.Name + " is suspended (emu up resumes it)"
	}
	return inst.Name + " is not running"
}

// failed ends a verb's event stream with err, and returns it.
func failed(sink event.Sink, name string, err error) error {
	sink.Emit(event.New(event.Failed, name, err.Error()))
	return err
}

// stopInstance stops inst, each step an event; not running is no error.
// It returns what happened, as the line a person reads.
func stopInstance(ctx context.Context, e *env, inst store.Instance, sink event.Sink) (string, error) {
	start := time.Now()
	err := instance.Stop(ctx, inst, e.log, sink)
	if isNotRunning(err) {
		return notRunning(inst), nil
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s stopped in %s; its data is kept (emu reset removes it)", inst.Name, progress.Dur(time.Since(start))), nil
}

func runReset(ctx context.Context, e *env, args []string) error {
	var jsonOut, template *bool
	home, t, err := instanceFlags(ctx, e, "reset", "[-f FILE | NAME] [--template] [--json]", args, func(fs *flag.FlagSet) {
		jsonOut = fs.Bool("json", false, "print events as JSON lines on stdout")
		template = fs.Bool("template", false, "also remove the image's ready snapshot (the next fresh up boots and saves a new one)")
	})
	if err != nil {
		return err
	}
	sink := e.stopReporter(*jsonOut)
	inst := home.Instance(t.name)
	if _, err := os.Stat(inst.Dir); os.IsNotExist(err) {
		sink.Emit(event.New(event.Done, t.name, t.name+" has no state to reset"))
		return nil
	}
	release, err := instance.Lock(inst)
	if err != nil {
		return failed(sink, t.name, err)
	}
	defer release()
	msg, err := stopInstance(ctx, e, inst, sink)
	if err != nil {
		return failed(sink, t.name, err)
	}
	if _, suspended := instance.Suspended(inst); suspended {
		msg = t.name + " is suspended: its saved state goes with its data"
	}
	// Said as a step, not the outcome: the reset is the outcome.
	sink.Emit(event.New(event.Log, "", msg))
	if *template {
		if info, err := instance.ReadInfo(inst); err == nil && info.DiskSHA256 != "" {
			dir := instance.TemplateDir(home.DiskCache(), info.DiskSHA256)
			if err := os.RemoveAll(dir); err != nil {
				return failed(sink, t.name, fmt.Errorf("reset %s: remove the ready snapshot %s: %w", t.name, dir, err))
			}
			sink.Emit(event.New(event.Log, "", "removed the image's ready snapshot"))
		}
	}
	if err := os.RemoveAll(inst.Dir); err != nil {
		return failed(sink, t.name, fmt.Errorf("reset %s: remove %s: %w", t.name, inst.Dir, err))
	}
	e.pruneDisks(home, false)
	sink.Emit(event.New(event.Done, t.name, t.name+" reset: its data is gone; the image is kept"))
	return nil
}
