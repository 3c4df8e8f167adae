package binopt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/proto"
)

// Runner runs the tools, strip and upx; command.Exec is one.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Outcome is how one run of a binary ended.
type Outcome struct {
	ExitCode int    // -1 when killed by a signal or timed out
	Signal   string // the signal that ended it, if any
	TimedOut bool
	Output   []byte // combined stdout and stderr
}

// Verifier runs a binary with arguments, within timeout. An error means it
// could not be run at all (such as "exec format error"); ctx's error means
// the caller gave up. emu optimize runs candidates on the host
// (HostVerifier); emu build runs them inside the guest, where they will run.
type Verifier interface {
	Run(ctx context.Context, path string, args []string, timeout time.Duration) (Outcome, error)
}

// Optimize strips and compresses the binary at src, verifies each result,
// and puts the smallest one that passed at dst (dst may be src). It never
// writes to src and writes dst only by renaming a complete file into place.
//
// A file that is not an executable for opts.Arch is kept as it is: the
// report's Kind and Reason say why, and the error is nil. So is a step that
// failed (strip, UPX, a verify): the report says which and why, and the
// next best file is chosen. Errors are for what lost the file or never
// started: src unreadable, dst unwritable, no UPX, a canceled ctx, and
// ErrOriginalFails when not even the original passes its verify.
func Optimize(ctx context.Context, r Runner, src, dst string, opts Options) (rep Report, err error) {
	start := time.Now()
	rep = Report{Path: dst, Chosen: Original}
	defer func() { rep.Duration = time.Since(start) }()
	if err := opts.validate(); err != nil {
		return rep, err
	}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	fi, err := os.Stat(src)
	if err != nil {
		return rep, err
	}
	rep.Original = fi.Size()
	kind, err := Detect(src, opts.Arch)
	rep.Kind = kind
	var skip *SkipError
	if errors.As(err, &skip) {
		rep.Reason = skip.Reason
		return rep, place(src, src, dst, fi, opts.DryRun)
	}
	if err != nil {
		return rep, err
	}
	if opts.Compress == CompressUPX && opts.UPX == "" {
		if opts.UPX, err = FindUPX(); err != nil {
			return rep, err
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(dst), ".emu-binopt-*")
	if err != nil {
		return rep, fmt.Errorf("optimize %s: %w", src, err)
	}
	defer os.RemoveAll(dir)

	o := &optimizer{ctx: ctx, r: r, opts: opts, src: src, dir: dir, name: filepath.Base(dst), mode: fi.Mode().Perm(), rep: &rep}
	if o.opts.Verifier == nil {
		o.opts.Verifier = HostVerifier{}
	}
	chosen, path, err := o.run()
	rep.Reason = o.notes.String()
	if err != nil {
		return rep, err
	}
	rep.Chosen = chosen
	return rep, place(path, src, dst, fi, opts.DryRun)
}

type optimizer struct {
	ctx        context.Context
	r          Runner
	opts       Options
	src, dir   string
	name       string // candidates carry dst's base name: argv[0] may matter
	mode       os.FileMode
	rep        *Report
	notes      notes
	origPassed *bool // nil until the original was verified
}

// run makes the candidates and returns the chosen one and its path.
func (o *optimizer) run() (Candidate, string, error) {
	stripped, strippedOK := "", false
	if o.opts.Strip {
		var err error
		if stripped, err = o.strip(); err != nil {
			return "", "", err
		}
		if stripped != "" {
			ok, err := o.accept(Stripped, stripped)
			if err != nil {
				return "", "", err
			}
			strippedOK = ok
		}
	}
	if o.opts.Compress == CompressUPX {
		in, inSize, from := o.src, o.rep.Original, Original
		if strippedOK {
			in, inSize, from = stripped, o.rep.Stripped, Stripped
		} else if stripped != "" {
			// The stripped file fails, so compress the original, but only
			// if it passes itself: otherwise nothing can be kept anyway.
			if ok, err := o.originalPasses(); err != nil || !ok {
				return Original, o.src, err
			}
		}
		compressed, err := o.compress(in, inSize, from)
		if err != nil {
			return "", "", err
		}
		if compressed != "" {
			ok, err := o.accept(Compressed, compressed)
			if err != nil {
				return "", "", err
			}
			if ok {
				o.rep.Verified = o.opts.Verify != nil
				return Compressed, compressed, nil
			}
		}
	}
	if strippedOK {
		o.rep.Verified = o.opts.Verify != nil
		return Stripped, stripped, nil
	}
	_, err := o.originalPasses()
	return Original, o.src, err
}

// originalPasses verifies the original, once; it fails with
// ErrOriginalFails when the original does not pass.
func (o *optimizer) originalPasses() (bool, error) {
	if o.opts.Verify == nil {
		return true, nil
	}
	if o.origPassed == nil {
		ok, err := o.verify(Original, o.src)
		if err != nil {
			return false, err
		}
		o.origPassed = &ok
		o.rep.Verified = ok
	}
	if !*o.origPassed {
		o.notes.add("nothing was kept but the original, which fails its verify too")
		return false, ErrOriginalFails
	}
	return true, nil
}

// candidate returns where candidate c goes: dir/c/name, or dir/c itself
// without a name (Prepare's layout).
func (o *optimizer) candidate(c Candidate) (string, error) {
	d := filepath.Join(o.dir, string(c))
	if o.name == "" {
		return d, nil
	}
	if err := os.Mkdir(d, 0o700); err != nil {
		return "", err
	}
	return filepath.Join(d, o.name), nil
}

// crossStrip names, by target architecture, the binutils strip that
// handles it on any host (Debian's binutils-ARCH-linux-gnu).
var crossStrip = map[string]string{"amd64": "x86_64-linux-gnu-strip", "arm64": "aarch64-linux-gnu-strip"}

// StripTool is the strip for binaries of arch: the host's own strip for
// its architecture; for another, the cross binutils' strip, else
// llvm-strip (which reads every target), else plain strip, which fails
// on a foreign file and leaves the original, saying so.
func StripTool(arch string, lookPath func(string) (string, error)) string {
	if arch == "" || arch == runtime.GOARCH {
		return "strip"
	}
	for _, t := range []string{crossStrip[arch], "llvm-strip"} {
		if t == "" {
			continue
		}
		if p, err := lookPath(t); err == nil {
			return p
		}
	}
	return "strip"
}

// strip makes the stripped candidate; "" when there is none worth keeping.
func (o *optimizer) strip() (string, error) {
	out, err := o.candidate(Stripped)
	if err != nil {
		return "", err
	}
	tool := o.opts.StripTool
	if tool == "" {
		tool = StripTool(o.opts.Arch, exec.LookPath)
	}
	if msg, err := o.r.Run(o.ctx, tool, "--strip-all", "-o", out, o.src); err != nil {
		if o.ctx.Err() != nil {
			return "", o.ctx.Err()
		}
		o.notes.add("strip failed, so the original goes on: %s", o.why(msg, err))
		return "", nil
	}
	size, err := o.finish(out)
	if err != nil {
		return "", err
	}
	o.rep.Stripped = size
	if size >= o.rep.Original {
		o.notes.add("strip saved nothing (already stripped)")
		return "", nil
	}
	return out, nil
}

// compress makes the UPX candidate from in; "" when there is none.
func (o *optimizer) compress(in string, inSize int64, from Candidate) (string, error) {
	out, err := o.candidate(Compressed)
	if err != nil {
		return "", err
	}
	args := append(o.opts.upxArgs(), "-o", out, in)
	if msg, err := o.r.Run(o.ctx, o.opts.UPX, args...); err != nil {
		if o.ctx.Err() != nil {
			return "", o.ctx.Err()
		}
		o.notes.add("upx failed, so the %s file goes on: %s", from, o.why(msg, err))
		return "", nil
	}
	size, err := o.finish(out)
	if err != nil {
		return "", err
	}
	o.rep.Compressed = size
	if size >= inSize {
		o.notes.add("upx saved nothing over the %s file", from)
		return "", nil
	}
	return out, nil
}

// accept verifies candidate c, or without Verify lets it through (a UPX
// result after upx -t).
func (o *optimizer) accept(c Candidate, path string) (bool, error) {
	if o.opts.Verify != nil {
		ok, err := o.verify(c, path)
		if err == nil && !ok {
			ch, _ := o.rep.Check(c)
			o.notes.add("the %s file fails its verify (%s)", c, ch.Reason)
		}
		return ok, err
	}
	if c != Compressed {
		return true, nil
	}
	return o.upxTest(path)
}

// upxTest runs upx -t on a compressed candidate.
func (o *optimizer) upxTest(path string) (bool, error) {
	if msg, err := o.r.Run(o.ctx, o.opts.UPX, "-t", "-q", path); err != nil {
		if o.ctx.Err() != nil {
			return false, o.ctx.Err()
		}
		o.notes.add("upx -t rejects the compressed file: %s", o.why(msg, err))
		return false, nil
	}
	return true, nil
}

// verify runs candidate c with Verify and records the check.
func (o *optimizer) verify(c Candidate, path string) (bool, error) {
	v := o.opts.Verify
	timeout := v.Timeout
	if timeout == 0 {
		timeout = DefaultVerifyTimeout
	}
	start := time.Now()
	out, err := o.opts.Verifier.Run(o.ctx, path, v.Args, timeout)
	ch := proto.Check{Candidate: string(c), ExitCode: out.ExitCode, TimedOut: out.TimedOut, Duration: time.Since(start),
		Output: strings.Join(command.LastLines(o.scrub(string(out.Output)), 5), "\n")}
	switch {
	case o.ctx.Err() != nil:
		return false, o.ctx.Err()
	case err != nil:
		ch.Reason = "does not run: " + o.scrub(err.Error())
	case out.TimedOut:
		ch.Reason = fmt.Sprintf("still running after %s", timeout)
	case out.Signal != "":
		ch.Reason = "killed by " + out.Signal
	case out.ExitCode != v.ExitCode:
		ch.Reason = fmt.Sprintf("exit code %d, want %d", out.ExitCode, v.ExitCode)
	case v.Output != "" && !strings.Contains(string(out.Output), v.Output):
		ch.Reason = fmt.Sprintf("output lacks %q", v.Output)
	default:
		ch.OK = true
	}
	o.rep.Checks = append(o.rep.Checks, ch)
	return ch.OK, nil
}

// finish gives a candidate the original's mode and returns its size.
func (o *optimizer) finish(path string) (int64, error) {
	if err := os.Chmod(path, o.mode); err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// why is a tool's failure in one line, without the temporary paths.
func (o *optimizer) why(out []byte, err error) string {
	if l := command.LastLines(string(out), 1); len(l) > 0 {
		return o.scrub(strings.TrimSpace(l[0]))
	}
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return o.scrub(msg)
}

func (o *optimizer) scrub(s string) string {
	for _, c := range []Candidate{Stripped, Compressed} {
		path := filepath.Join(o.dir, string(c), o.name)
		s = strings.ReplaceAll(s, path, strings.TrimSpace(string(c)+" "+o.name))
	}
	return s
}

// place puts path at dst: nothing to do when it is already there, else a
// copy (of src) or the candidate itself, synced and renamed into place.
func place(path, src, dst string, srcInfo os.FileInfo, dryRun bool) error {
	if dryRun {
		return nil
	}
	if path == src {
		if di, err := os.Stat(dst); err == nil && os.SameFile(srcInfo, di) {
			return nil
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".emu-binopt-*")
		if err != nil {
			return fmt.Errorf("install %s: %w", dst, err)
		}
		defer os.Remove(tmp.Name())
		in, err := os.Open(src)
		if err == nil {
			_, err = io.Copy(tmp, in)
			in.Close()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("install %s: %w", dst, err)
		}
		path = tmp.Name()
	}
	if err := syncFile(path); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := os.Chmod(path, srcInfo.Mode().Perm()); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if di, err := os.Stat(dst); err == nil {
		// Replacing a file in place: keep its owner where we may.
		if st, ok := di.Sys().(*syscall.Stat_t); ok {
			_ = os.Lchown(path, int(st.Uid), int(st.Gid))
		}
	}
	if err := os.Rename(path, dst); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return syncFile(filepath.Dir(dst))
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
