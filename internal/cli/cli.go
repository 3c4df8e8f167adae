// Package cli is emu's command line: one file per verb, flags turned into
// options, errors and hints rendered once, here.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/emu-dev/emu/internal/agentbin"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// Version is emu's version, set at link time.
var Version = "dev"

// Exit codes.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2 // bad flags or an invalid stack file
	ExitInterrupted = 130
)

// env is what every verb gets.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
	debug          bool
	// getenv is the one way verbs read the environment (os.Getenv).
	getenv func(string) string
}

type verb struct {
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

var verbs map[string]verb

func init() {
	verbs = map[string]verb{
		"build":   {"build an image bundle from a stack file", runBuild},
		"verify":  {"boot a bundle and check that every service becomes healthy", runVerify},
		"up":      {"start the stack locally; return once every service is healthy", runUp},
		"down":    {"stop the instance cleanly; its data is kept", runDown},
		"status":  {"show instances: running or not, services, ports", runStatus},
		"logs":    {"show the console log, or a service's journal", runLogs},
		"reset":   {"stop the instance and delete its data; the image is kept", runReset},
		"doctor":  {"check the host for what emu needs", runDoctor},
		"env":     {"print what a host program needs to reach the stack: connect values and ports", runEnv},
		"run":     {"run a host command with the stack's connect values (starting the stack first)", runRun},
		"exec":    {"run a command in the running guest (or a container service's container)", runExec},
		"shell":   {"a shell in the running guest: emu exec of bash, or sh", runShell},
		"schema":  {"print the stack file's JSON Schema", runSchema},
		"version": {"print emu's version", runVersion},
	}
	verbs["optimize"] = verb{"strip and UPX-compress binaries in place, keeping only results that still run", runOptimize}
	verbs["push"] = verb{"upload an image to an OCI registry (one index per tag, one entry per architecture)", runPush}
	verbs["pull"] = verb{"download an image from an OCI registry into the image store, verified", runPull}
	verbs["images"] = verb{"list the images in the store: name, arch, size, created, origin, digest", runImages}
	verbs["rmi"] = verb{"remove an image from the store (refused while an instance uses it)", runRmi}
}

// Main runs emu with args (without the program name) and returns the exit
// code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, getenv: os.Getenv}
	var rest []string
	for _, a := range args {
		switch a {
		case "--debug", "-debug":
			e.debug = true
		default:
			rest = append(rest, a)
		}
	}
	level := slog.LevelWarn
	if e.debug {
		level = slog.LevelDebug
	}
	e.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if len(rest) == 0 || rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		usage(stdout)
		return ExitOK
	}
	v, ok := verbs[rest[0]]
	if !ok {
		fmt.Fprintf(stderr, "emu: unknown command %q\n\n", rest[0])
		usage(stderr)
		return ExitUsage
	}
	err := v.run(ctx, e, rest[1:])
	return e.render(err)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "emu turns a multi-service backend stack into a local emulator image.")
	fmt.Fprintln(w, "\nUsage: emu [--debug] COMMAND [flags]\n\nCommands:")
	names := make([]string, 0, len(verbs))
	for n := range verbs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, verbs[n].summary)
	}
	fmt.Fprintln(w, "\nRun emu COMMAND -h for a command's flags. Docs: docs/cli.md")
}

// usageError is a bad flag or argument.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// hinted errors carry what to do next.
type hinted interface{ HintText() string }

// detailed errors carry lines a person reads below the error.
type detailed interface{ Detail() string }

// render prints err once, with its detail and hint, and returns the exit
// code it maps to.
func (e *env) render(err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	var xe exitError
	if errors.As(err, &xe) {
		return xe.code
	}
	fmt.Fprintf(e.stderr, "emu: %v\n", err)
	var d detailed
	if errors.As(err, &d) {
		if s := d.Detail(); s != "" {
			fmt.Fprint(e.stderr, s)
		}
	}
	if h := hintOf(err); h != "" {
		fmt.Fprintf(e.stderr, "hint: %s\n", h)
	}
	var u usageError
	switch {
	case errors.As(err, &u), errors.Is(err, spec.ErrInvalid):
		return ExitUsage
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	return ExitFailure
}

// hintOf is the first hint in err's chain, outermost first: an error
// with no hint of its own (a build's, when the tool it ran had one) lets
// the one it wraps speak.
func hintOf(err error) string {
	for err != nil {
		if h, ok := err.(hinted); ok && h.HintText() != "" {
			return h.HintText()
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if h := hintOf(e); h != "" {
					return h
				}
			}
			return ""
		default:
			return ""
		}
	}
	return ""
}

// withHint attaches a hint to err.
type withHint struct {
	err  error
	hint string
}

func (w withHint) Error() string    { return w.err.Error() }
func (w withHint) Unwrap() error    { return w.err }
func (w withHint) HintText() string { return w.hint }

// newFlags returns a flag set for verb that reports errors as usage errors.
func newFlags(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: emu %s %s\n\n%s\n\nFlags:\n", name, args, verbs[name].summary)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags anywhere among args (flags may follow positionals).
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// agentBinary finds the guest agent for arch (agentbin.Find): EMU_AGENT,
// the one built into emu, or one beside emu.
func (e *env) agentBinary(home store.Home, arch string) (string, error) {
	exe, _ := os.Executable()
	p, err := agentbin.Find(arch, agentbin.Options{Env: e.getenv("EMU_AGENT"), Exe: exe, Cache: home.Agents()})
	if nf := (*agentbin.NotFoundError)(nil); errors.As(err, &nf) {
		return "", withHint{err: err, hint: "use an emu built with `make` (bin/emu carries the agents for amd64 and arm64), " +
			"or set EMU_AGENT to an agent built for linux/" + arch + " (CGO_ENABLED=0 GOOS=linux GOARCH=" + arch + " go build ./cmd/emu-agent)"}
	}
	return p, err
}

func runVersion(_ context.Context, e *env, args []string) error {
	agents := "guest agents built in: " + strings.Join(agentbin.Embedded(), ", ")
	if len(agentbin.Embedded()) == 0 {
		agents = "no guest agents built in: it uses EMU_AGENT or emu-agent-linux-ARCH beside it"
	}
	fmt.Fprintf(e.stdout, "emu %s (%s)\n", Version, agents)
	return nil
}

func runSchema(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "schema", "")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	_, err := e.stdout.Write(spec.Schema())
	return err
}

// newView is a command's progress: on stderr, as a live view on a
// terminal or plain lines without one; with --json, JSON lines on stdout.
func (e *env) newView(jsonOut bool, opts ...progress.Option) (*progress.Renderer, progress.Mode) {
	mode := progress.Detect(e.stderr, jsonOut, e.getenv)
	w := e.stderr
	if mode == progress.JSON {
		w = e.stdout
	}
	return progress.New(w, mode, opts...), mode
}
