package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

func runPush(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "push", "REF [-f FILE | NAME | BUNDLE-DIR ...] [flags]")
	file := fs.String("f", spec.DefaultFile, "the stack `file` whose image to push")
	rf := addRegistryFlags(fs)
	jsonOut := fs.Bool("json", false, "print events as JSON lines on stdout")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usageError{errors.New("push needs a reference to push to: emu push REGISTRY/REPOSITORY:TAG [NAME | BUNDLE-DIR ...]")}
	}
	ref, what := pos[0], pos[1:]
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	dirs, err := pushSources(ctx, home, *file, flagSet(fs, "f"), what)
	if err != nil {
		return err
	}

	view, mode := e.newView(*jsonOut)
	start := time.Now()
	res, err := oci.Push(ctx, oci.PushOptions{Options: rf.options(view), Ref: ref, Bundles: dirs, Version: Version})
	if err != nil {
		view.Emit(event.New(event.Failed, "", err.Error()))
		view.Close()
		return err
	}
	var archs []string
	for _, a := range res.Artifacts {
		archs = append(archs, a.Bundle.Arch+" "+shortDigest(a.Digest.String()))
	}
	msg := fmt.Sprintf("pushed %s (%s): %d blob(s) uploaded (%s), %d in the registry already",
		ref, strings.Join(archs, ", "), res.Uploaded, progress.Humanize(res.Bytes), res.Present)
	view.Emit(event.New(event.Done, ref, msg).With("digest", res.Digest))
	view.Close()
	if mode == progress.JSON {
		return nil
	}
	if mode == progress.Live {
		// Plain mode printed the done event's line; the live block has none.
		fmt.Fprintf(e.stderr, "%s in %s\n", msg, progress.Dur(time.Since(start)))
	}
	// The one line a script reads: the index by digest.
	fmt.Fprintf(e.stdout, "%s@%s\n", repository(ref), res.Digest)
	return nil
}

// pushSources names the bundle directories to push: the arguments (a
// bundle directory, or an image name in the store), else the stack file's
// image.
func pushSources(ctx context.Context, home store.Home, file string, fileSet bool, args []string) ([]string, error) {
	if len(args) == 0 {
		t, err := resolve(ctx, home, file, fileSet, nil)
		if err != nil {
			return nil, err
		}
		// The stack's image, and those emu build --arch made for other
		// architectures: one reference, an index of them all.
		dirs := []string{t.bundle}
		for _, a := range spec.Arches {
			if a == t.stack.Base.Arch {
				continue
			}
			d := filepath.Join(home.Images(), store.BundleName(t.stack.Name, a, t.stack.Base.Arch))
			if _, err := bundle.Read(d); err == nil {
				dirs = append(dirs, d)
			}
		}
		return dirs, checkBundle(t.bundle)
	}
	if fileSet {
		return nil, usageError{errors.New("name the image with -f FILE or arguments, not both")}
	}
	var dirs []string
	for _, a := range args {
		t, err := resolve(ctx, home, file, false, []string{a})
		if err != nil {
			return nil, err
		}
		if t.bundle == "" {
			return nil, usageError{fmt.Errorf("%s: push takes image names or bundle directories after the reference", a)}
		}
		if err := checkBundle(t.bundle); err != nil {
			return nil, err
		}
		dirs = append(dirs, t.bundle)
	}
	return dirs, nil
}

func checkBundle(dir string) error {
	if _, err := bundle.Read(dir); err != nil {
		return withHint{err: fmt.Errorf("no image at %s: %w", dir, err), hint: "build it first: emu build -f emu.yaml (or name a bundle directory)"}
	}
	return nil
}

// repository is ref without its tag.
func repository(ref string) string {
	slash := strings.LastIndex(ref, "/")
	if i := strings.LastIndex(ref, ":"); i > slash {
		return ref[:i]
	}
	return ref
}
