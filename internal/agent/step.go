package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// maxOutputLine caps one output line sent to the host.
const maxOutputLine = 4096

// baseEnv is what every bake step starts from; the step's own env is added.
var baseEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"LANG=C.UTF-8",
	"DEBIAN_FRONTEND=noninteractive",
}

// StepError is a bake step that did not succeed.
type StepError struct {
	Step     string
	Code     int // exit code; -1 when killed or never started
	TimedOut bool
	Timeout  time.Duration
	Err      error
}

func (e *StepError) Error() string {
	// The step's name travels beside the message (the event's name).
	switch {
	case e.TimedOut:
		return fmt.Sprintf("timed out after %s and was killed", e.Timeout)
	case e.Code >= 0:
		return fmt.Sprintf("exited with code %d", e.Code)
	}
	return e.Err.Error()
}

func (e *StepError) Unwrap() error { return e.Err }

// ackTimeout bounds the wait for the host's acknowledgement of a step's
// start. The host answers within milliseconds while it reads; one that is
// gone cannot be helped by waiting, so the step runs anyway.
const ackTimeout = 30 * time.Second

// runStep runs one bake step, streaming its output line by line. With acks
// (the provision request's AckSteps) it first waits until the host has
// acknowledged the step's start: a step that crashes the guest at once
// must not take its own name down with it.
func (a *Agent) runStep(ctx context.Context, st proto.Step, acks <-chan string) error {
	a.emit(event.New(event.StepStart, st.Name, ""))
	start := time.Now()
	var ack time.Duration
	if acks != nil {
		if err := a.awaitAck(ctx, st.Name, acks); err != nil {
			return err
		}
		ack = time.Since(start)
		start = time.Now()
	}
	code, err := a.execStep(ctx, st)
	if err == nil {
		done := event.New(event.StepDone, st.Name, time.Since(start).Round(time.Millisecond).String()).WithCode(0)
		if acks != nil {
			done = done.With(proto.FieldAck, ack.String())
		}
		a.emit(done)
		return nil
	}
	a.emit(event.New(event.StepFailed, st.Name, err.Error()).WithCode(code))
	return err
}

// awaitAck waits for the host's OpAck of step name. Stale IDs (a step
// acknowledged after its wait ran out) are skipped.
func (a *Agent) awaitAck(ctx context.Context, name string, acks <-chan string) error {
	t := time.NewTimer(ackTimeout)
	defer t.Stop()
	for {
		select {
		case id := <-acks:
			if id == name {
				return nil
			}
		case <-t.C:
			a.emit(event.New(event.Log, name, fmt.Sprintf("the host did not acknowledge the step's start within %s; running it anyway", ackTimeout)))
			return nil
		case <-ctx.Done():
			err := fmt.Errorf("wait for the host to acknowledge step %s: %w", name, ctx.Err())
			a.emit(event.New(event.StepFailed, name, err.Error()).WithCode(-1))
			return err
		}
	}
}

func (a *Agent) execStep(ctx context.Context, st proto.Step) (int, error) {
	if len(st.Run) == 0 {
		return -1, &StepError{Step: st.Name, Code: -1, Err: errors.New("empty command")}
	}
	if st.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, st.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, st.Run[0], st.Run[1:]...)
	cmd.Dir = st.Dir
	cmd.Env = append([]string(nil), baseEnv...)
	keys := make([]string, 0, len(st.Env))
	for k := range st.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+st.Env[k])
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	home := "/root"
	if st.User != "" && st.User != "root" {
		cred, dir, err := lookupUser(st.User)
		if err != nil {
			return -1, &StepError{Step: st.Name, Code: -1, Err: err}
		}
		cmd.SysProcAttr.Credential = cred
		home = dir
	}
	cmd.Env = append(cmd.Env, "HOME="+home)
	if cmd.Dir == "" {
		cmd.Dir = home
		if _, err := os.Stat(home); err != nil {
			cmd.Dir = "/"
		}
	}
	// Kill the whole process group: a step's children must not outlive it.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second

	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.Stdin = nil
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if len(line) > maxOutputLine {
				line = line[:maxOutputLine] + "…"
			}
			a.emit(event.New(event.StepOutput, st.Name, line))
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Start()
	if err != nil {
		pw.Close()
		<-copied
		return -1, &StepError{Step: st.Name, Code: -1, Err: fmt.Errorf("start %s: %w", st.Run[0], err)}
	}
	err = cmd.Wait()
	pw.Close()
	<-copied
	if err == nil {
		return 0, nil
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return -1, &StepError{Step: st.Name, Code: -1, TimedOut: true, Timeout: st.Timeout, Err: ctx.Err()}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return ee.ExitCode(), &StepError{Step: st.Name, Code: ee.ExitCode(), Err: err}
	}
	return -1, &StepError{Step: st.Name, Code: -1, Err: err}
}

func lookupUser(name string) (*syscall.Credential, string, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, "", fmt.Errorf("look up user %s: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, u.HomeDir, nil
}
