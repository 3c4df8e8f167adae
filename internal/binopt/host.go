package binopt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/command"
)

// FindUPX returns the path of upx, or of upx-ucl (Debian's package name).
func FindUPX() (string, error) {
	for _, name := range []string{"upx", "upx-ucl"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w (looked for upx and upx-ucl in PATH): install Debian's upx-ucl, from bookworm-backports on bookworm (scripts/install-deps does it)", ErrNoUPX)
}

// HostVerifier runs candidates on this machine, each in its own process
// group, killed whole on timeout.
type HostVerifier struct{}

// maxOutput bounds the output kept from one run.
const maxOutput = 64 << 10

// Run runs path with args and waits at most timeout.
func (HostVerifier) Run(ctx context.Context, path string, args []string, timeout time.Duration) (Outcome, error) {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, path, args...)
	cmd.SysProcAttr = command.SysProcAttr(false, false)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second // a child holding the pipe open must not hang us
	var buf capped
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	out := Outcome{Output: buf.b.Bytes()}
	switch {
	case ctx.Err() != nil:
		return out, ctx.Err()
	case tctx.Err() != nil:
		out.TimedOut, out.ExitCode = true, -1
		return out, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		out.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			out.Signal = ws.Signal().String()
		}
		return out, nil
	}
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		return out, err
	}
	return out, nil
}

// capped keeps the first maxOutput bytes written to it.
type capped struct{ b bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxOutput - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
