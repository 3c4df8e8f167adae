package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// DefaultVerifyTimeout bounds one verify run when the request gives none.
const DefaultVerifyTimeout = 30 * time.Second

// original is the candidate name of the file already at Dst.
const original = "original"

// OptimizeError is a binary whose original fails its verify too: the verify
// settings, or the binary, are wrong.
type OptimizeError struct {
	Dst    string
	Reason string
}

func (e *OptimizeError) Error() string {
	return fmt.Sprintf("%s: the original fails its verify too (%s); fix its files[].optimize.verify or the binary", e.Dst, e.Reason)
}

// optimize installs, for each binary, the first candidate that passes its
// verify, and reports each choice in one log event.
func (a *Agent) optimize(ctx context.Context, bins []proto.Binary) error {
	if len(bins) == 0 {
		return nil
	}
	a.emit(event.New(event.StageStart, proto.OptimizeStage, fmt.Sprintf("verify %d binaries in the guest", len(bins))))
	for _, b := range bins {
		e, err := a.install(ctx, b)
		if err != nil {
			a.emit(event.New(event.StageFailed, proto.OptimizeStage, err.Error()))
			return err
		}
		a.emit(e)
	}
	// The candidates not chosen must not stay in the image, nor their bytes.
	filepath.WalkDir(a.opts.OptimizeDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if err := wipe(path); err != nil {
				a.emit(event.New(event.Log, proto.OptimizeStage, err.Error()))
			}
		}
		return nil
	})
	if err := os.RemoveAll(a.opts.OptimizeDir); err != nil {
		a.emit(event.New(event.Log, proto.OptimizeStage, "remove candidates: "+err.Error()))
	}
	os.Remove(filepath.Dir(a.opts.OptimizeDir)) // only if nothing else is there
	a.emit(event.New(event.StageDone, proto.OptimizeStage, ""))
	return nil
}

// install tries b's candidates in order and renames the first that passes
// over b.Dst. The original stays when none does, provided it passes itself.
func (a *Agent) install(ctx context.Context, b proto.Binary) (event.Event, error) {
	fi, err := os.Stat(b.Dst)
	if err != nil {
		return event.Event{}, fmt.Errorf("optimize %s: %w", b.Dst, err)
	}
	chosen, size, verified := original, fi.Size(), false
	var checks []proto.Check
	var notes []string
	for _, c := range b.Candidates {
		if b.Verify != nil {
			ch, err := runVerify(ctx, c.Name, c.Path, *b.Verify)
			if err != nil {
				return event.Event{}, err
			}
			checks = append(checks, ch)
			if !ch.OK {
				notes = append(notes, fmt.Sprintf("the %s file fails its verify (%s)", c.Name, ch.Reason))
				continue
			}
		}
		// A second name for the original, to wipe its bytes once replaced.
		retired := c.Path + ".original"
		if err := os.Link(b.Dst, retired); err != nil {
			retired = ""
		}
		cfi, err := replace(c.Path, b.Dst, fi)
		if err != nil {
			if retired != "" {
				os.Remove(retired)
			}
			notes = append(notes, fmt.Sprintf("install the %s file: %v", c.Name, err))
			continue
		}
		if retired != "" {
			if err := wipe(retired); err != nil {
				notes = append(notes, err.Error())
			}
			os.Remove(retired)
		}
		chosen, size, verified = c.Name, cfi.Size(), b.Verify != nil
		break
	}
	if chosen == original && b.Verify != nil && len(b.Candidates) > 0 {
		ch, err := runVerify(ctx, original, b.Dst, *b.Verify)
		if err != nil {
			return event.Event{}, err
		}
		if !ch.OK {
			return event.Event{}, &OptimizeError{Dst: b.Dst, Reason: ch.Reason}
		}
		checks = append(checks, ch)
		verified = true
	}
	reason := strings.Join(notes, "; ")
	msg := fmt.Sprintf("%s: installed the %s file (%d bytes)", b.Dst, chosen, size)
	if reason != "" {
		msg += ": " + reason
	}
	return event.New(event.Log, proto.OptimizeStage, msg).WithData(proto.BinaryChoice{
		Dst: b.Dst, Chosen: chosen, Size: size, Verified: verified, Reason: reason, Checks: checks,
	})
}

// replace renames path over dst with dst's mode and owner, and returns
// path's info. Both lie on the root filesystem.
func replace(path, dst string, dstInfo os.FileInfo) (os.FileInfo, error) {
	if err := os.Chmod(path, dstInfo.Mode().Perm()); err != nil {
		return nil, err
	}
	if st, ok := dstInfo.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
			return nil, err
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(path, dst); err != nil {
		return nil, err
	}
	return fi, nil
}

// wipe overwrites the file at path with zeros and syncs them, for a file
// about to be removed: ext4 frees a removed file's blocks but keeps their
// bytes, and the guest's trim does not reach every freed block (2 MB of a
// replaced 10 MB binary stayed in the demo's image), so the image would
// carry them. QEMU's detect-zeroes turns the zeros into holes.
func wipe(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("wipe %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("wipe %s: %w", path, err)
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < fi.Size(); off += int64(len(zeros)) {
		n := min(int64(len(zeros)), fi.Size()-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return fmt.Errorf("wipe %s: %w", path, err)
		}
	}
	// Before the removal: unsynced pages of a removed file are dropped,
	// never written.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("wipe %s: %w", path, err)
	}
	return nil
}

// verifyOutputCap bounds the output kept from one verify run.
const verifyOutputCap = 64 << 10

// runVerify runs the candidate at path with v.Args, in its own process
// group, killed whole after v.Timeout. The error is ctx's only: a candidate
// that cannot run at all fails its check.
func runVerify(ctx context.Context, name, path string, v proto.Verify) (proto.Check, error) {
	timeout := v.Timeout
	if timeout <= 0 {
		timeout = DefaultVerifyTimeout
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, path, v.Args...)
	cmd.Dir = "/"
	cmd.Env = append(append([]string(nil), baseEnv...), "HOME=/root")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second // a child holding the pipe open must not hang us
	var out cappedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	ch := proto.Check{Candidate: name, Duration: time.Since(start), Output: lastLines(out.b.String(), 5)}
	if ctx.Err() != nil {
		return ch, ctx.Err()
	}
	var ee *exec.ExitError
	switch {
	case tctx.Err() != nil:
		ch.ExitCode, ch.TimedOut = -1, true
		ch.Reason = fmt.Sprintf("still running after %s", timeout)
		return ch, nil
	case errors.As(err, &ee):
		ch.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ch.Reason = "killed by " + ws.Signal().String()
			return ch, nil
		}
	case err != nil && !errors.Is(err, exec.ErrWaitDelay):
		ch.ExitCode = -1
		ch.Reason = "does not run: " + err.Error()
		return ch, nil
	}
	switch {
	case ch.ExitCode != v.ExitCode:
		ch.Reason = fmt.Sprintf("exit code %d, want %d", ch.ExitCode, v.ExitCode)
	case v.Output != "" && !strings.Contains(out.b.String(), v.Output):
		ch.Reason = fmt.Sprintf("output lacks %q", v.Output)
	default:
		ch.OK = true
	}
	return ch, nil
}

// cappedBuffer keeps the first verifyOutputCap bytes written to it.
type cappedBuffer struct{ b bytes.Buffer }

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if room := verifyOutputCap - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// lastLines returns s's last n non-empty lines, each cut to maxOutputLine.
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if l = strings.TrimRight(l, "\r"); l == "" {
			continue
		}
		if len(l) > maxOutputLine {
			l = l[:maxOutputLine] + "…"
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
