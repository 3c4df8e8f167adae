package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/command"
)

// StartOptions describe one QEMU process.
type StartOptions struct {
	Binary string
	Args   []string
	// ExtraFiles become fds 3, 4, ... in QEMU (listening sockets).
	ExtraFiles []*os.File
	// Output receives QEMU's own stdout and stderr (not the guest console).
	Output io.Writer
	// Detach starts QEMU in its own session so it outlives emu (emu up).
	// Otherwise the kernel kills QEMU when emu dies, even by SIGKILL.
	Detach bool
	Log    *slog.Logger
}

// Process is a started QEMU. Wait and Done may be used by many callers.
type Process struct {
	Pid  int
	cmd  *exec.Cmd
	log  *slog.Logger
	done chan struct{}
	err  error
}

// Start starts QEMU and a goroutine that reaps it.
func Start(opts StartOptions) (*Process, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cmd := exec.Command(opts.Binary, opts.Args...)
	cmd.ExtraFiles = opts.ExtraFiles
	cmd.Stdout, cmd.Stderr = opts.Output, opts.Output
	cmd.SysProcAttr = command.SysProcAttr(true, opts.Detach)
	log.Debug("start qemu", "argv", append([]string{opts.Binary}, opts.Args...))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.Binary, err)
	}
	p := &Process{Pid: cmd.Process.Pid, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Debug("qemu exited", "pid", p.Pid, "err", p.err)
		close(p.done)
	}()
	return p, nil
}

// Done is closed once QEMU has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for QEMU to exit and returns how it ended.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Exited reports whether QEMU has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop ends QEMU: SIGTERM, up to grace for it to exit, then SIGKILL.
// It returns once the process is reaped or ctx ends.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	p.log.Debug("stop qemu: SIGTERM", "pid", p.Pid)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	p.log.Debug("stop qemu: SIGKILL", "pid", p.Pid)
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill qemu %d: %w", p.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("qemu %d did not exit after SIGKILL", p.Pid)
	}
}

// versionCache holds Version's answers by binary, size and mtime.
var versionCache sync.Map

// Version is the first line of `bin --version` ("QEMU emulator version
// 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"), asked once per binary as it is
// on disk.
func Version(ctx context.Context, bin string) (string, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s\x00%d\x00%d", path, st.Size(), st.ModTime().UnixNano())
	if v, ok := versionCache.Load(key); ok {
		return v.(string), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", path, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	versionCache.Store(key, line)
	return line, nil
}
