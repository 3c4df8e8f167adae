// Package command runs host tools (mmdebstrap, mkfs.ext4, qemu-img, tar)
// with a context, in their own process group, always reaped.
package command

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Exec runs commands for real. Its zero value is ready to use.
type Exec struct {
	// Output, when set, receives the command's combined output as it runs.
	Output io.Writer
}

// Run runs name with args and returns its combined output. On failure the
// error names the command and carries the output's last lines.
func (x Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	bin := name
	if p, err := LookPath(name); err == nil {
		bin = p
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = SysProcAttr(false, false)
	// Cancel the whole group: mmdebstrap and tar start children.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var buf bytes.Buffer
	var w io.Writer = &buf
	if x.Output != nil {
		w = io.MultiWriter(&buf, x.Output)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			return buf.Bytes(), fmt.Errorf("%s: %w", name, ctx.Err())
		}
		return buf.Bytes(), fmt.Errorf("%s %s: %w%s", name, strings.Join(args, " "), err, Tail(buf.Bytes(), 15))
	}
	return buf.Bytes(), nil
}

// LookPath finds name in PATH, then in /usr/sbin and /sbin: a regular
// user's PATH on Debian lacks them, and mkfs.ext4, tune2fs and e2fsck
// live there.
func LookPath(name string) (string, error) {
	return LookSbin(exec.LookPath, name)
}

// LookSbin is LookPath with look in place of exec.LookPath.
func LookSbin(look func(string) (string, error), name string) (string, error) {
	p, err := look(name)
	if err == nil || strings.Contains(name, "/") {
		return p, err
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p, serr := look(dir + "/" + name); serr == nil {
			return p, nil
		}
	}
	return "", err
}

// Tail returns the last n lines of out, each indented on its own line, or
// "" when out is empty.
func Tail(out []byte, n int) string {
	lines := LastLines(string(out), n)
	if len(lines) == 0 {
		return ""
	}
	return "\n    " + strings.Join(lines, "\n    ")
}

// LastLines returns the last n non-empty lines of s.
func LastLines(s string, n int) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, strings.TrimRight(l, "\r"))
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
