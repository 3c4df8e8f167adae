package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/store"
)

// registryFlags are the flags push, pull and up REF share.
type registryFlags struct {
	insecure *bool
}

func addRegistryFlags(fs *flag.FlagSet) registryFlags {
	return registryFlags{
		insecure: fs.Bool("insecure", false, "allow plain HTTP to a registry that is not on localhost"),
	}
}

func (f registryFlags) options(sink event.Sink) oci.Options {
	return oci.Options{Insecure: *f.insecure, UserAgent: "emu/" + Version, Sink: sink}
}

// pullFlags are pull's own, which up REF shares too.
type pullFlags struct {
	registryFlags
	arch *string
	name *string
}

func addPullFlags(fs *flag.FlagSet) pullFlags {
	return pullFlags{
		registryFlags: addRegistryFlags(fs),
		arch:          fs.String("arch", "", "the `ARCH`itecture to pull from a multi-architecture reference (default: the host's, "+runtime.GOARCH+")"),
		name:          fs.String("name", "", "store the image (and name its instance) `NAME` instead of the stack's name"),
	}
}

func runPull(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pull", "REF [--arch ARCH] [--name NAME] [flags]")
	pf := addPullFlags(fs)
	jsonOut := fs.Bool("json", false, "print events as JSON lines on stdout")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{fmt.Errorf("pull takes one reference (REGISTRY/REPOSITORY:TAG), got %d arguments", len(pos))}
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	_, err = pullImage(ctx, e, home, pos[0], pf, *jsonOut)
	return err
}

// pullImage pulls ref into the store with progress and says what it did.
func pullImage(ctx context.Context, e *env, home store.Home, ref string, pf pullFlags, jsonOut bool) (oci.PullResult, error) {
	if *pf.name != "" {
		if err := validImageName(*pf.name); err != nil {
			return oci.PullResult{}, usageError{fmt.Errorf("--name: %w", err)}
		}
	}
	view, mode := e.newView(jsonOut)
	start := time.Now()
	res, err := oci.Pull(ctx, oci.PullOptions{
		Options:    pf.options(view),
		Ref:        ref,
		Arch:       *pf.arch,
		Home:       home,
		Name:       *pf.name,
		Lock:       func(final string) (func(), error) { return build.LockOutput(home.Locks(), final) },
		CanReplace: func(name string, _ bundle.Manifest) error { return replaceable(home, name) },
	})
	if err == nil {
		err = unpackPulled(ctx, home, res, view)
	}
	if err != nil {
		view.Emit(event.New(event.Failed, "", err.Error()))
		view.Close()
		return res, err
	}
	var msg string
	switch {
	case res.UpToDate:
		msg = fmt.Sprintf("%s (%s) is up to date as %s", ref, res.Manifest.Arch, res.Name)
	default:
		msg = fmt.Sprintf("pulled %s (%s, %s) as %s: %s downloaded, %d blob(s) reused",
			ref, res.Manifest.Arch, shortDigest(res.Origin.Digest), res.Name, progress.Humanize(res.Fetched), res.Reused)
	}
	view.Emit(event.New(event.Done, res.Name, msg).With("digest", res.Origin.Digest).With("dir", res.Dir))
	view.Close()
	if mode == progress.Live {
		// Plain mode printed the done event's line; the live block has none.
		fmt.Fprintf(e.stderr, "%s in %s\n", msg, progress.Dur(time.Since(start)))
	}
	return res, nil
}

// unpackPulled unpacks the pulled disk into the disk cache now, as a build
// seeds it, so that the first up of a pulled image boots at once: an up
// would unpack it anyway (1.5 s for the demo's disk). A disk that cannot
// be unpacked now (no space, say) is a warning: up tries again. Only an
// interrupt fails the pull here.
func unpackPulled(ctx context.Context, home store.Home, res oci.PullResult, view *progress.Renderer) error {
	const stage = "unpack"
	view.Emit(event.New(event.StageStart, stage, store.BundleDisk+" into the disk cache"))
	if _, err := machine.BaseDisk(ctx, home.DiskCache(), res.Dir, res.Manifest); err != nil {
		view.Emit(event.New(event.StageFailed, stage, err.Error()))
		if ctx.Err() != nil {
			return fmt.Errorf("unpack %s: %w", res.Name, ctx.Err())
		}
		view.Emit(event.New(event.Log, "", "the image is in place; emu up unpacks its disk when it first boots it"))
		return nil
	}
	view.Emit(event.New(event.StageDone, stage, ""))
	return nil
}

// replaceable refuses to replace the image under name while an instance
// keeps data on it: its overlay is backed by the old image's disk.
func replaceable(home store.Home, name string) error {
	users, err := imageUsers(home, filepath.Join(home.Images(), name))
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return withHint{
			err: fmt.Errorf("image %s is in use by instance %s, which keeps data on it; pulling another image under that name would leave the instance without its base",
				name, strings.Join(users, ", ")),
			hint: fmt.Sprintf("pull under another name with --name, or drop the instance's data first with emu reset %s", users[0]),
		}
	}
	return nil
}

// imageUsers returns the instances that use the bundle at dir: those
// running it, and those whose overlay (their data) is backed by it.
func imageUsers(home store.Home, dir string) ([]string, error) {
	entries, err := os.ReadDir(home.Instances())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	var users []string
	for _, en := range entries {
		if !en.IsDir() {
			continue
		}
		inst := home.Instance(en.Name())
		info, err := instance.ReadInfo(inst)
		switch {
		case err == nil:
			if info.Bundle != dir {
				continue
			}
		case errors.Is(err, os.ErrNotExist):
			// No record of its image: it was started from the image of
			// its own name, if from any.
			if filepath.Join(home.Images(), inst.Name) != dir {
				continue
			}
		default:
			return nil, fmt.Errorf("instance %s: %w", inst.Name, err)
		}
		_, oerr := os.Stat(inst.Overlay())
		_, perr := instance.RunningPID(inst)
		if oerr == nil || perr == nil {
			users = append(users, inst.Name)
		}
	}
	return users, nil
}

// validImageName accepts what the store can hold: a stack name.
func validImageName(n string) error {
	ok := n != "" && len(n) <= 63 && n[0] != '-' && n[len(n)-1] != '-'
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("invalid name %q: want a lowercase DNS label (a-z, 0-9 and '-')", n)
	}
	return nil
}

// isRef reports whether an argument of up names an image in a registry
// rather than a bundle directory or an instance: it is no path that
// exists, does not look like one, and has a tag, a digest or a registry
// host (a first component with a dot or a port, or localhost).
func isRef(a string) bool {
	if _, err := os.Stat(a); err == nil {
		return false
	}
	if strings.HasPrefix(a, ".") || strings.HasPrefix(a, "/") || strings.HasPrefix(a, "~") {
		return false
	}
	if strings.ContainsAny(a, "@") {
		return true
	}
	first, rest, hasSlash := strings.Cut(a, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return true
	}
	last := a
	if hasSlash {
		last = rest[strings.LastIndex(rest, "/")+1:]
	}
	return strings.Contains(last, ":")
}

// pulledImage finds the image pulled from ref for arch in the store: under
// name when one is given, else any; "" when there is none.
func pulledImage(home store.Home, ref, name, arch string) string {
	var dirs []string
	if name != "" {
		dirs = []string{filepath.Join(home.Images(), name)}
	} else if entries, err := os.ReadDir(home.Images()); err == nil {
		for _, en := range entries {
			if en.IsDir() && !strings.HasPrefix(en.Name(), ".") {
				dirs = append(dirs, filepath.Join(home.Images(), en.Name()))
			}
		}
	}
	for _, d := range dirs {
		o, err := oci.ReadOrigin(d)
		if err != nil || o.Ref != ref {
			continue
		}
		if m, err := bundle.Read(d); err == nil && m.Arch == arch {
			return d
		}
	}
	return ""
}

// upFromRef resolves up's REF: the image pulled from it before, or a pull
// now, which up says it does. The instance takes the image's name.
func upFromRef(ctx context.Context, e *env, home store.Home, t target, pf pullFlags, jsonOut bool) (target, error) {
	arch := *pf.arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	if dir := pulledImage(home, t.ref, *pf.name, arch); dir != "" {
		return target{name: filepath.Base(dir), bundle: dir, ref: t.ref}, nil
	}
	if !jsonOut {
		fmt.Fprintf(e.stderr, "pulling %s: not in the image store yet\n", t.ref)
	}
	res, err := pullImage(ctx, e, home, t.ref, pf, jsonOut)
	if err != nil {
		return t, err
	}
	return target{name: res.Name, bundle: res.Dir, ref: t.ref}, nil
}
