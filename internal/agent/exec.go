package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// execChunk bounds one exec.output event's data.
const execChunk = 32 << 10

// execRun is one command the host runs in the guest (emu exec).
type execRun struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// tty is the terminal's controlling side, nil without a terminal.
	tty *os.File
}

// startExec starts req's command and streams its output as exec.output
// events, then its exit code as one exec.exit; both are named req.ID. The
// host feeds stdin with OpInput and may resize or signal it.
func (a *Agent) startExec(ctx context.Context, req proto.Request) {
	id := req.ID
	fail := func(err error) {
		e, _ := event.New(event.ExecOutput, id, "").With(proto.FieldStream, "stderr").WithData([]byte("emu-agent: " + err.Error() + "\n"))
		a.emitWait(ctx, e)
		a.emitWait(ctx, event.New(event.ExecExit, id, err.Error()).WithCode(127))
	}
	if id == "" || len(req.Argv) == 0 {
		fail(errors.New("exec request without an ID or a command"))
		return
	}
	argv := req.Argv
	if req.Service != "" {
		args := []string{proto.PodmanPath, "exec", "--interactive"}
		if req.TTY {
			args = append(args, "--tty")
		}
		argv = append(append(args, "emu-"+req.Service), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(slices.Clone(baseEnv), "HOME=/root")
	for k, v := range req.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = "/root"
	if _, err := os.Stat(cmd.Dir); err != nil {
		cmd.Dir = "/"
	}
	run := &execRun{cmd: cmd}
	var outputs []io.Reader
	var streams []string
	if req.TTY {
		tty, pts, err := openPTY()
		if err != nil {
			fail(fmt.Errorf("open a terminal: %w", err))
			return
		}
		setWinsize(tty, req.Rows, req.Cols)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		run.tty, run.stdin = tty, tty
		outputs, streams = []io.Reader{tty}, []string{"stdout"}
		defer pts.Close()
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		in, err := cmd.StdinPipe()
		if err != nil {
			fail(err)
			return
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			fail(err)
			return
		}
		errOut, err := cmd.StderrPipe()
		if err != nil {
			fail(err)
			return
		}
		run.stdin = in
		outputs, streams = []io.Reader{out, errOut}, []string{"stdout", "stderr"}
	}
	if err := cmd.Start(); err != nil {
		if run.tty != nil {
			run.tty.Close()
		}
		fail(fmt.Errorf("start %s: %w", argv[0], err))
		return
	}
	a.mu.Lock()
	a.execs[id] = run
	a.mu.Unlock()
	go func() {
		var wg sync.WaitGroup
		for i, r := range outputs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.pumpOutput(ctx, id, streams[i], r)
			}()
		}
		wg.Wait()
		code := 0
		if err := cmd.Wait(); err != nil {
			code = exitCode(err)
		}
		if run.tty != nil {
			run.tty.Close()
		}
		a.mu.Lock()
		delete(a.execs, id)
		a.mu.Unlock()
		a.emitWait(ctx, event.New(event.ExecExit, id, "").WithCode(code))
	}()
}

// pumpOutput sends r's bytes as exec.output events until r ends. A
// terminal's side reads EIO once the command and its children have
// closed it: that is its end.
func (a *Agent) pumpOutput(ctx context.Context, id, stream string, r io.Reader) {
	buf := make([]byte, execChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			e, _ := event.New(event.ExecOutput, id, "").With(proto.FieldStream, stream).WithData(buf[:n])
			a.emitWait(ctx, e)
		}
		if err != nil {
			return
		}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 127
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}

// execInput, execResize and execSignal act on a run; a run already ended
// ignores them.
func (a *Agent) execInput(req proto.Request) {
	run := a.run(req.ID)
	if run == nil {
		return
	}
	if len(req.Data) > 0 {
		run.stdin.Write(req.Data)
	}
	if req.EOF {
		if run.tty != nil {
			// A terminal has no end of input to close: ^D at the
			// start of a line is how a program sees one.
			run.tty.Write([]byte{4})
			return
		}
		run.stdin.Close()
	}
}

func (a *Agent) execResize(req proto.Request) {
	if run := a.run(req.ID); run != nil && run.tty != nil {
		setWinsize(run.tty, req.Rows, req.Cols)
	}
}

func (a *Agent) execSignal(req proto.Request) {
	if run := a.run(req.ID); run != nil && run.cmd.Process != nil && req.Signal > 0 {
		// The process group: a shell's children too.
		syscall.Kill(-run.cmd.Process.Pid, syscall.Signal(req.Signal))
	}
}

func (a *Agent) run(id string) *execRun {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.execs[id]
}

// emitWait queues e for the host, waiting for room rather than dropping
// the oldest event: a command's output must not lose bytes when it
// outruns the channel. It is not copied to the console.
func (a *Agent) emitWait(ctx context.Context, e event.Event) {
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return
		}
		select {
		case a.out <- e:
			a.mu.Unlock()
			return
		default:
		}
		a.mu.Unlock()
		select {
		case <-a.room:
		case <-ctx.Done():
			return
		}
	}
}
