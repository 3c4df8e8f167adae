package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/store"
)

// exitError is a command's exit code passed on as emu's own (emu run);
// it is not rendered.
type exitError struct{ code int }

func (e exitError) Error() string { return "exit status " + strconv.Itoa(e.code) }

// connectEnv is what a host program needs to reach the instance: the
// stack's connect values, EMU_INSTANCE and one EMU_PORT_* per forward,
// from the instance's last start. With the stack file at hand its connect
// templates are rendered anew over those ports, so an edit shows at once.
func connectEnv(t target, inst store.Instance) (map[string]string, error) {
	info, err := instance.ReadInfo(inst)
	if errors.Is(err, os.ErrNotExist) {
		return nil, withHint{err: fmt.Errorf("%s has not been started on this host", t.name), hint: "emu up starts it (emu run starts it too)"}
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", inst.State(), err)
	}
	env := map[string]string{"EMU_INSTANCE": inst.Name}
	for _, p := range info.Ports {
		env[p.EnvName()] = strconv.Itoa(p.Host)
	}
	values := info.Connect
	if t.stack != nil {
		if values, err = instance.RenderConnect(t.stack.Connect, inst.Name, info.Ports); err != nil {
			return nil, err
		}
	}
	for k, v := range values {
		env[k] = v
	}
	return env, nil
}

// writeEnv prints env in format: plain KEY=value lines, dotenv (values
// double-quoted) or shell (export KEY='value', for eval).
func writeEnv(w io.Writer, env map[string]string, format string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := env[k]
		switch format {
		case "", "plain":
			fmt.Fprintf(w, "%s=%s\n", k, v)
		case "dotenv":
			r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "$", `\$`)
			fmt.Fprintf(w, "%s=\"%s\"\n", k, r.Replace(v))
		case "shell":
			fmt.Fprintf(w, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
		default:
			return usageError{fmt.Errorf("--format %s: want plain, dotenv or shell", format)}
		}
	}
	return nil
}

func runEnv(ctx context.Context, e *env, args []string) error {
	var jsonOut *bool
	var format *string
	home, t, err := instanceFlags(ctx, e, "env", "[-f FILE | NAME] [--json | --format plain|dotenv|shell]", args, func(fs *flag.FlagSet) {
		jsonOut = fs.Bool("json", false, "print the values as one JSON object")
		format = fs.String("format", "plain", "`plain` (KEY=value), dotenv (KEY=\"value\") or shell (export KEY='value', for eval)")
	})
	if err != nil {
		return err
	}
	vals, err := connectEnv(t, home.Instance(t.name))
	if err != nil {
		return err
	}
	if *jsonOut {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(vals)
	}
	return writeEnv(e.stdout, vals, *format)
}

// runRun starts the instance when it is not running, then runs a host
// command with the instance's connect values in its environment and exits
// with the command's exit code.
func runRun(ctx context.Context, e *env, args []string) error {
	i := slices.Index(args, "--")
	if i < 0 || i == len(args)-1 {
		return usageError{errors.New("run needs a command after --: emu run [-f FILE | NAME] -- CMD ARGS...")}
	}
	ours, cmdArgs := args[:i], args[i+1:]
	home, t, err := instanceFlags(ctx, e, "run", "[-f FILE | NAME] -- CMD ARGS...", ours, nil)
	if err != nil {
		return err
	}
	inst := home.Instance(t.name)
	if _, err := instance.RunningPID(inst); err != nil {
		// emu up, its table and messages on stderr: stdout is the
		// command's.
		fmt.Fprintf(e.stderr, "%s is not running: starting it\n", t.name)
		quiet := *e
		quiet.stdout = e.stderr
		if err := runUp(ctx, &quiet, ours); err != nil {
			return err
		}
	}
	vals, err := connectEnv(t, inst)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	cmd.Env = os.Environ()
	for k, v := range vals {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return exitError{ee.ExitCode()}
	case errors.As(err, &ee):
		// Killed by a signal: the shell's convention, 128 + the signal.
		return exitError{128 + signalOf(ee)}
	}
	return fmt.Errorf("run %s: %w", cmdArgs[0], err)
}
