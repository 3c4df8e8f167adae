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

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// target is what an instance verb acts on: a stack file, or a bundle (up
// IMAGE) or an instance named on the command line.
type target struct {
	name   string
	stack  *spec.Stack // nil when named by bundle or instance name
	bundle string      // the bundle directory
	// ref is the registry reference named (up REF); name and bundle are
	// set when the store holds an image pulled from it.
	ref string
}

// resolve names the instance the way every instance verb does: an
// argument (a bundle directory, or a stack or instance name), else the
// stack file (-f, default ./emu.yaml).
func resolve(ctx context.Context, home store.Home, file string, fileSet bool, args []string) (target, error) {
	if len(args) > 1 {
		return target{}, usageError{fmt.Errorf("want at most one image or instance name, got %d: %s", len(args), strings.Join(args, " "))}
	}
	if len(args) == 1 {
		if fileSet {
			return target{}, usageError{errors.New("name the instance with -f FILE or an argument, not both")}
		}
		a := args[0]
		if _, err := os.Stat(filepath.Join(a, store.BundleManifest)); err == nil {
			m, err := bundle.Read(a)
			if err != nil {
				return target{}, err
			}
			dir, _ := filepath.Abs(a)
			return target{name: m.Name, bundle: dir}, nil
		}
		if isRef(a) {
			t := target{ref: a}
			if dir := pulledImage(home, a, "", runtime.GOARCH); dir != "" {
				t.name, t.bundle = filepath.Base(dir), dir
			}
			return t, nil
		}
		if strings.ContainsAny(a, `/\`) {
			return target{}, fmt.Errorf("%s is not an image bundle (no %s in it)", a, store.BundleManifest)
		}
		return target{name: a, bundle: filepath.Join(home.Images(), a)}, nil
	}
	s, err := loadStack(ctx, file)
	if err != nil {
		return target{}, err
	}
	return target{name: s.Name, stack: s, bundle: filepath.Join(home.Images(), s.Name)}, nil
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// instanceFlags parses the flags of an instance verb that names its
// instance with -f FILE or an argument; more adds the verb's own flags.
func instanceFlags(ctx context.Context, e *env, verb, usage string, args []string, more func(*flag.FlagSet)) (store.Home, target, error) {
	fs := newFlags(e, verb, usage)
	file := fs.String("f", spec.DefaultFile, "the stack `file`")
	if more != nil {
		more(fs)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return store.Home{}, target{}, err
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return store.Home{}, target{}, err
	}
	t, err := resolve(ctx, home, *file, flagSet(fs, "f"), pos)
	if err == nil && t.ref != "" && t.name == "" && verb != "up" {
		err = withHint{err: fmt.Errorf("no image pulled from %s is in the image store", t.ref), hint: "emu pull " + t.ref + ", or emu up " + t.ref}
	}
	return home, t, err
}

// loadStack loads the stack file at path, returning at once when ctx ends
// (Ctrl-C, SIGTERM): the loader is bounded (spec.MaxFileSize and the shape
// limits keep it under a second), but a signal is answered without waiting
// for it.
func loadStack(ctx context.Context, path string) (*spec.Stack, error) {
	type result struct {
		s   *spec.Stack
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := spec.Load(path)
		done <- result{s, err}
	}()
	select {
	case r := <-done:
		return r.s, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("load stack file %s: interrupted: %w", path, ctx.Err())
	}
}
