// Package build turns a stack file into an image bundle: a visible list of
// named stages, each timed and reported as events.
//
//	rootfs -> inject -> disk -> provision (services, bake, slim in the
//	guest) -> compress -> bundle
package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/rootfs"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// Runner runs host tools; command.Exec in production, a fake in tests.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Options configure one build.
type Options struct {
	Stack *spec.Stack
	Home  store.Home
	// OutDir is the parent of the bundle directory OutDir/<name>; default
	// the image store.
	OutDir string
	// BundleName is the bundle directory's name under OutDir; default the
	// stack's name (store.BundleName for another architecture's image).
	BundleName string
	// AgentBinary is the static emu-agent for the guest's architecture.
	AgentBinary string
	Accel       accel.Choice
	// KeepOnFailure keeps the work directory (tree, disk) of a failed build.
	KeepOnFailure bool
	Sink          event.Sink
	Log           *slog.Logger
	Runner        Runner
	// QEMU is the system emulator binary; default by the guest's arch.
	QEMU string
	// Version is emu's version, recorded in the manifest.
	Version string
	// SkipVerify skips the boot check of the new bundle before it is placed.
	SkipVerify bool
	// NoFlatten keeps every image's layers as they are (EMU_FLATTEN=0;
	// bench/flatten measures with it).
	NoFlatten bool
	// BaseTarball, when set, is the base tree instead of one made by
	// mmdebstrap (a tree made elsewhere; the VM tests' tiny guest).
	BaseTarball string
}

// Result is a finished build.
type Result struct {
	Dir      string
	Manifest bundle.Manifest
	// Logs is the directory with this build's provision and console logs.
	Logs string
}

// stageResult is what a stage made: recorded in the manifest and reported
// on its stage.done event.
type stageResult struct {
	// Size is the stage's output in bytes (0: none worth telling).
	Size int64
	// Cached: the output came from a cache.
	Cached bool
	// Facts are figures shown with stage.done besides the size (the files
	// injected, the boot check's times).
	Facts map[string]string
}

// fields are r as stage.done's fields.
func (r stageResult) fields() map[string]string {
	f := map[string]string{}
	for k, v := range r.Facts {
		f[k] = v
	}
	if r.Size > 0 {
		f[proto.FieldSize] = strconv.FormatInt(r.Size, 10)
	}
	if r.Cached {
		f[proto.FieldCached] = "true"
	}
	return f
}

// stage is one named step of the build.
type stage struct {
	name string
	run  func(*builder, context.Context) (stageResult, error)
	// when says whether a stack needs the stage; nil: every stack does.
	when func(*spec.Stack) bool
}

// stages is the build, in order: the one list the build runs and the
// progress view plans from (StagesFor).
var stages = []stage{
	// First: a corrupt image fails before anything slow runs.
	{"images", (*builder).images, func(s *spec.Stack) bool { return len(s.Images) > 0 }},
	{"rootfs", (*builder).rootfs, nil},
	{"inject", (*builder).inject, nil},
	{"disk", (*builder).disk, nil},
	{"provision", (*builder).provision, nil},
	{"compress", (*builder).compress, nil},
	{"verify", (*builder).verify, nil},
	{"bundle", (*builder).bundle, nil},
}

// StagesFor returns the names of the stages a build of s runs, in order.
func StagesFor(s *spec.Stack) []string {
	var names []string
	for _, st := range stages {
		if st.when == nil || st.when(s) {
			names = append(names, st.name)
		}
	}
	return names
}

// builder carries one build's state from stage to stage.
type builder struct {
	opts    Options
	work    string // work directory: tree, raw disk
	logs    string // this build's log directory
	staged  string // the bundle being assembled, renamed into place at the end
	final   string
	tarball string
	kernel  string
	initrd  string
	man     bundle.Manifest
	bins    binaries // files[].optimize, from inject to the manifest
	// images: the stack's image sources, and each image reference's ID.
	imageSources []imageSource
	imageIDs     map[string]string

	logMu   sync.Mutex
	logFile *os.File
	status  event.Status
}

// Build runs every stage. On failure or interruption the previous bundle at
// the same place is untouched, the work directory is removed (unless
// KeepOnFailure), and every process started is reaped.
func Build(ctx context.Context, opts Options) (res *Result, err error) {
	if opts.Stack == nil {
		return nil, errors.New("build: no stack")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Runner == nil {
		opts.Runner = command.Exec{}
	}
	if opts.OutDir == "" {
		opts.OutDir = opts.Home.Images()
	}
	if opts.Accel.TimeoutScale <= 0 {
		opts.Accel.TimeoutScale = 1
	}
	if opts.BundleName == "" {
		opts.BundleName = opts.Stack.Name
	}
	b := &builder{opts: opts, final: filepath.Join(opts.OutDir, opts.BundleName)}
	cleanup, err := b.prepare()
	if err != nil {
		return nil, err
	}
	defer func() {
		cleanup(err)
	}()

	for _, st := range stages {
		if st.when != nil && !st.when(opts.Stack) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, b.failure(st.name, fmt.Errorf("interrupted: %w", err))
		}
		b.emit(event.New(event.StageStart, st.name, ""))
		start := time.Now()
		res, err := st.run(b, ctx)
		took := time.Since(start)
		if err != nil {
			msg := err.Error()
			var be *Error
			if errors.As(err, &be) {
				msg = be.Err.Error()
			}
			b.emit(event.New(event.StageFailed, st.name, msg))
			return nil, b.failure(st.name, err)
		}
		done := event.New(event.StageDone, st.name, "")
		done.Fields = res.fields()
		b.emit(done)
		b.man.Stages = append(b.man.Stages, bundle.StageRecord{Name: st.name, Duration: bundle.Millis(took), Size: res.Size, Cached: res.Cached})
	}
	b.emit(event.New(event.Done, opts.Stack.Name, "bundle written to "+b.final))
	return &Result{Dir: b.final, Manifest: b.man, Logs: b.logs}, nil
}

// prepare makes the work and log directories and returns the cleanup to
// run when the build ends.
func (b *builder) prepare() (func(error), error) {
	name := b.opts.BundleName
	for _, d := range []string{b.opts.Home.Work(), b.opts.OutDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, &Error{Stage: "prepare", Err: fmt.Errorf("create %s: %w", d, err)}
		}
	}
	if err := checkWritable(b.opts.OutDir); err != nil {
		return nil, &Error{Stage: "prepare", Err: err, Hint: "choose another directory with --out, or fix the permissions of " + b.opts.OutDir}
	}
	unlock, err := lockOutput(b.opts.Home.Locks(), b.final)
	if err != nil {
		return nil, &Error{Stage: "prepare", Err: err}
	}
	// unlock runs last, after the cleanup below: the next build starts
	// on a clean place.
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	work, err := os.MkdirTemp(b.opts.Home.Work(), name+"-")
	if err != nil {
		return nil, &Error{Stage: "prepare", Err: fmt.Errorf("create work directory: %w", err)}
	}
	b.work = work
	b.logs = filepath.Join(b.opts.Home.BuildLogs(name), fmt.Sprintf("%s-%d", time.Now().UTC().Format("20060102T150405Z"), os.Getpid()))
	if err := os.MkdirAll(b.logs, 0o700); err != nil {
		os.RemoveAll(work)
		return nil, &Error{Stage: "prepare", Err: fmt.Errorf("create log directory: %w", err)}
	}
	f, err := os.OpenFile(filepath.Join(b.logs, store.ProvisionLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		os.RemoveAll(work)
		return nil, &Error{Stage: "prepare", Err: fmt.Errorf("create build log: %w", err)}
	}
	b.logFile = f
	b.staged = filepath.Join(b.opts.OutDir, fmt.Sprintf(".%s.tmp-%d", name, os.Getpid()))
	os.RemoveAll(b.staged)
	ok = true
	return func(err error) {
		defer unlock()
		b.logMu.Lock()
		b.logFile.Close()
		b.logMu.Unlock()
		os.RemoveAll(b.staged)
		if err != nil && b.opts.KeepOnFailure {
			return
		}
		os.RemoveAll(b.work)
		pruneLogs(b.opts.Home.BuildLogs(name), 5)
	}, nil
}

// emit records e in the build log and the status, then passes it on.
func (b *builder) emit(e event.Event) {
	b.record(e)
	b.logMu.Lock()
	b.status = event.Fold(b.status, e)
	b.logMu.Unlock()
	if b.opts.Sink != nil {
		b.opts.Sink.Emit(e)
	}
}

// record writes e to the build log only.
func (b *builder) record(e event.Event) {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	if b.logFile != nil {
		if line, err := json.Marshal(e); err == nil {
			b.logFile.Write(append(line, '\n'))
		}
	}
}

func (b *builder) snapshot() event.Status {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	return b.status
}

// failure wraps err as the build's *Error, with the logs to read, and
// emits the stream's final failed event.
func (b *builder) failure(stageName string, err error) error {
	var be *Error
	if !errors.As(err, &be) {
		be = &Error{Stage: stageName, Err: err}
	}
	if be.Stage == "" {
		be.Stage = stageName
	}
	be.Logs = append(be.Logs, filepath.Join(b.logs, store.ProvisionLog))
	for _, f := range []string{store.SerialLog, store.QEMULog} {
		if fi, serr := os.Stat(filepath.Join(b.logs, f)); serr == nil && fi.Size() > 0 {
			be.Logs = append(be.Logs, filepath.Join(b.logs, f))
		}
	}
	if b.opts.KeepOnFailure {
		be.Kept = b.work
	}
	name := be.Step()
	if name == "" {
		name = be.Stage
	}
	b.emit(event.New(event.Failed, name, be.Error()))
	return be
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".emu-write-test-")
	if err != nil {
		return fmt.Errorf("output directory %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// pruneLogs keeps the newest keep build log directories.
func pruneLogs(dir string, keep int) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for len(names) > keep {
		os.RemoveAll(filepath.Join(dir, names[0]))
		names = names[1:]
	}
}

// rootfs makes or reuses the base tree's tarball.
func (b *builder) rootfs(ctx context.Context) (stageResult, error) {
	if b.opts.BaseTarball != "" {
		fi, err := os.Stat(b.opts.BaseTarball)
		if err != nil {
			return stageResult{}, fmt.Errorf("base tarball: %w", err)
		}
		b.tarball = b.opts.BaseTarball
		b.man.RootfsKey = "given:" + filepath.Base(b.tarball)
		return stageResult{Size: fi.Size(), Facts: map[string]string{"given": "true"}}, nil
	}
	cache := rootfs.Cache{Dir: b.opts.Home.RootfsCache(), Runner: b.runner("rootfs")}
	base := GuestBase(b.opts.Stack)
	path, cached, err := cache.Ensure(ctx, base)
	if err != nil {
		return stageResult{}, err
	}
	b.tarball = path
	b.man.RootfsKey = rootfs.Key(base)
	fi, err := os.Stat(path)
	if err != nil {
		return stageResult{}, err
	}
	if cached {
		b.emit(event.New(event.Log, "rootfs", "reusing cached root filesystem "+path))
	}
	return stageResult{Size: fi.Size(), Cached: cached}, nil
}

// GuestBase is the base the guest is made from: the stack's, with a
// container engine when the stack uses containers.
func GuestBase(s *spec.Stack) spec.Base {
	base := s.Base
	if s.UsesContainers() {
		base.Packages = append(append([]string(nil), base.Packages...), spec.EnginePackages...)
	}
	return base
}

// runner returns the build's runner, with tool output sent to the log as
// log events of the named stage when it is the real one.
func (b *builder) runner(stageName string) Runner {
	if x, ok := b.opts.Runner.(command.Exec); ok && x.Output == nil {
		x.Output = &lineWriter{emit: func(line string) {
			b.emit(event.New(event.Log, stageName, line))
		}}
		return x
	}
	return b.opts.Runner
}

// lineWriter calls emit once per complete line written to it.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	emit func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		if line := string(w.buf[:i]); line != "" {
			w.emit(line)
		}
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

var _ io.Writer = (*lineWriter)(nil)
