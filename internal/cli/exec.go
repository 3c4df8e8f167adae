package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"golang.org/x/term"

	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
)

// runExec runs a command in the running instance's guest through its
// agent, with a terminal when stdin and stdout are one (emu exec -- bash),
// and exits with the command's exit code.
func runExec(ctx context.Context, e *env, args []string) error {
	i := slices.Index(args, "--")
	if i < 0 || i == len(args)-1 {
		return usageError{errors.New("exec needs a command after --: emu exec [-f FILE | NAME] [--service S] -- CMD ARGS...")}
	}
	return execIn(ctx, e, "exec", args[:i], args[i+1:])
}

// runShell is emu exec of the guest's shell: bash where it has one.
func runShell(ctx context.Context, e *env, args []string) error {
	return execIn(ctx, e, "shell", args, []string{"/bin/sh", "-c", "command -v bash >/dev/null && exec bash -l || exec sh -l"})
}

func execIn(ctx context.Context, e *env, verb string, ours, argv []string) error {
	var service *string
	var noTTY *bool
	home, t, err := instanceFlags(ctx, e, verb, "[-f FILE | NAME] [--service S] [-T] -- CMD ARGS...", ours, func(fs *flag.FlagSet) {
		service = fs.String("service", "", "run it in this container service's container")
		noTTY = fs.Bool("T", false, "no terminal, even when stdin is one")
	})
	if err != nil {
		return err
	}
	inst := home.Instance(t.name)
	if _, err := instance.RunningPID(inst); err != nil {
		if isNotRunning(err) {
			return withHint{err: fmt.Errorf("%s is not running", t.name), hint: "emu up starts it"}
		}
		return err
	}
	o := machine.ExecOptions{Argv: argv, Service: *service, Stdin: os.Stdin, Stdout: e.stdout, Stderr: e.stderr}
	in, out := int(os.Stdin.Fd()), int(os.Stdout.Fd())
	if !*noTTY && term.IsTerminal(in) && term.IsTerminal(out) && e.stdout == os.Stdout {
		o.TTY = true
		o.Env = map[string]string{"TERM": e.getenv("TERM")}
		if w, h, err := term.GetSize(out); err == nil {
			o.Rows, o.Cols = uint16(h), uint16(w)
		}
		state, err := term.MakeRaw(in)
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer term.Restore(in, state)
		resize := make(chan [2]uint16, 1)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(out); err == nil {
					select {
					case resize <- [2]uint16{uint16(h), uint16(w)}:
					default:
					}
				}
			}
		}()
		o.Resize = resize
	}
	code, err := machine.Exec(ctx, inst.Agent(), o)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}
