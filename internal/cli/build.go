package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/doctor"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

func runBuild(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "build", "[-f FILE] [--out DIR] [flags]")
	file := fs.String("f", spec.DefaultFile, "the stack `file`")
	out := fs.String("out", "", "write the bundle to `DIR`/<name>/ instead of the image store")
	skipVerify := fs.Bool("skip-verify", false, "do not boot the new image to check that every service comes up before placing it")
	keep := fs.Bool("keep-on-failure", false, "keep the work directory (tree and disk) of a failed build for inspection")
	jsonOut := fs.Bool("json", false, "print events as JSON lines on stdout")
	accelFlag := fs.String("accel", "", "accelerator: kvm, hvf or tcg (default: probe)")
	archFlag := fs.String("arch", "", "build for these guest `ARCH`itectures, comma-separated: amd64, arm64 (default: the stack file's base.arch); "+
		"another architecture's image is NAME.ARCH in the image store")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Errorf("build takes no arguments (got %q); name the stack file with -f", pos[0])}
	}
	if runtime.GOOS != "linux" {
		return withHint{err: fmt.Errorf("emu build runs on Linux only (mmdebstrap, mkfs.ext4), not %s", runtime.GOOS), hint: "build the bundle on a Linux machine or in CI, copy it here and run emu up"}
	}
	stack, err := loadStack(ctx, *file)
	if err != nil {
		return err
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	outDir := home.Images()
	if *out != "" {
		if outDir, err = filepath.Abs(*out); err != nil {
			return usageError{fmt.Errorf("--out %s: %w", *out, err)}
		}
	}
	stacks := []*spec.Stack{stack}
	if *archFlag != "" {
		if stacks, err = forArches(stack, *archFlag); err != nil {
			return err
		}
	}
	for _, st := range stacks {
		if len(stacks) > 1 {
			fmt.Fprintf(e.stderr, "building %s for %s\n", st.Name, st.Base.Arch)
		}
		_, err = buildStack(ctx, e, buildRequest{stack: st, home: home, outDir: outDir, bundleName: store.BundleName(st.Name, st.Base.Arch, stack.Base.Arch),
			keep: *keep, skipVerify: *skipVerify, json: *jsonOut, accel: *accelFlag})
		if err != nil {
			return err
		}
	}
	return nil
}

// forArches is the stack for each architecture of list (--arch
// amd64,arm64), in that order, each checked to be buildable.
func forArches(s *spec.Stack, list string) ([]*spec.Stack, error) {
	var out []*spec.Stack
	seen := map[string]bool{}
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if seen[a] {
			return nil, usageError{fmt.Errorf("--arch %s: %s named twice", list, a)}
		}
		seen[a] = true
		if !slices.Contains(spec.Arches, a) {
			return nil, usageError{fmt.Errorf("--arch %s: unknown architecture %q: want amd64 or arm64", list, a)}
		}
		st, err := s.ForArch(a)
		if err != nil {
			return nil, usageError{err}
		}
		out = append(out, st)
	}
	return out, nil
}

type buildRequest struct {
	stack      *spec.Stack
	home       store.Home
	outDir     string
	bundleName string // default the stack's name
	keep       bool
	skipVerify bool
	json       bool
	accel      string
}

// buildStack checks the host and runs the build with progress; emu build
// and emu up (when the bundle is missing or stale) share it.
func buildStack(ctx context.Context, e *env, r buildRequest) (*build.Result, error) {
	agentBin, err := e.agentBinary(r.home, r.stack.Base.Arch)
	if err != nil {
		return nil, err
	}
	choice, err := checkHost(ctx, e, r.home, r.outDir, r.stack.Base.Arch, r.accel, true)
	if err != nil {
		return nil, err
	}
	view, mode := e.newView(r.json, progress.WithStages(build.StagesFor(r.stack)...))
	res, err := build.Build(ctx, build.Options{
		Stack:         r.stack,
		Home:          r.home,
		OutDir:        r.outDir,
		BundleName:    r.bundleName,
		AgentBinary:   agentBin,
		Accel:         choice,
		KeepOnFailure: r.keep,
		SkipVerify:    r.skipVerify,
		NoFlatten:     e.getenv("EMU_FLATTEN") == "0",
		Sink:          view,
		Log:           e.log,
		Version:       Version,
	})
	view.Close()
	if err != nil {
		return nil, err
	}
	if mode != progress.JSON {
		fmt.Fprint(e.stderr, progress.Summary(view.Status()))
		fmt.Fprintf(e.stderr, "bundle: %s\n", res.Dir)
	}
	e.pruneDisks(r.home, mode == progress.JSON)
	return res, nil
}

// checkHost runs the doctor's checks and chooses the accelerator; it stops
// with the doctor's report when something is missing.
func checkHost(ctx context.Context, e *env, home store.Home, dir, arch, accelOverride string, needBuild bool) (accel.Choice, error) {
	rep := doctor.Run(ctx, doctorOptions(home, dir, arch, accelOverride, needBuild))
	if err := rep.Err(); err != nil {
		// The error names each missing piece; its hint, the commands
		// that fix them.
		return accel.Choice{}, err
	}
	if rep.Accel.Accel == "" {
		return accel.Choice{}, fmt.Errorf("choose accelerator: none usable")
	}
	if rep.Accel.Accel == "tcg" && accelOverride == "" {
		fmt.Fprintf(e.stderr, "warning: no hardware acceleration, guests run under tcg (slower): %s\n", rep.Accel.Reason)
	}
	choice := rep.Accel
	choice.TBSize = tbSize(e.getenv("EMU_TCG_TB_SIZE"))
	return choice, nil
}

// tbSize is EMU_TCG_TB_SIZE: TCG's translation cache in MiB, for a stack
// whose code outgrows qemu.DefaultTBSize ("default" means QEMU's own). It
// is 0, qemu.DefaultTBSize, when unset or not understood.
func tbSize(v string) int {
	if v == "default" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0
	}
	return n
}

func runDoctor(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "doctor", "[flags]")
	accelFlag := fs.String("accel", "", "check this accelerator: kvm, hvf or tcg")
	arch := fs.String("arch", "", "guest architecture (default: the host's)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	rep := doctor.Run(ctx, doctorOptions(home, home.Data, *arch, *accelFlag, true))
	rep.Write(e.stdout) // the table, then the commands that fix what failed
	if !rep.OK() {
		return fmt.Errorf("the host is missing what emu needs")
	}
	return nil
}

// doctorOptions points the doctor's accelerator probe cache into home.
func doctorOptions(home store.Home, dir, arch, accelOverride string, needBuild bool) doctor.Options {
	chooser := accel.Chooser{CacheDir: filepath.Dir(home.AccelCache())}
	return doctor.Options{Dir: dir, NeedBuild: needBuild, GuestArch: arch, Accel: accelOverride, Choose: chooser.Choose}
}
