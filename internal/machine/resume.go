package machine

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qmp"
)

// ResumeOptions say how to resume a guest from a saved state.
type ResumeOptions struct {
	// Config is the guest, as a cold boot would start it; it must have a
	// QMP socket.
	Config Config
	// State is the saved state's file.
	State string
	// Consume runs once the state is loaded, before the guest runs again:
	// from then on the disk moves on and the state must not be used again.
	Consume func() error
	// Runtime is handed to the agent (OpResume).
	Runtime *proto.Runtime
	// Started runs once QEMU has started, before the load (emu up records
	// the pid then); its error stops QEMU.
	Started func(vm *VM) error
}

// Resume starts QEMU waiting for a saved state, loads it, runs the guest
// and asks its agent to resume (OpResume). The guest it returns delivers
// only the events of that answer: what the agent had queued before the
// suspend is dropped. It returns how long the load took.
//
// Any failure before the guest runs is a *RestoreError, with QEMU stopped
// and the disk as it was: the caller may boot cold instead.
func Resume(ctx context.Context, o ResumeOptions) (Guest, time.Duration, error) {
	cfg := o.Config
	if cfg.QMPSocket == "" {
		return nil, 0, &RestoreError{Err: fmt.Errorf("no qmp socket")}
	}
	cfg.Incoming = true
	vm, err := Start(ctx, cfg)
	if err != nil {
		return nil, 0, &RestoreError{Err: err}
	}
	start := time.Now()
	fail := func(err error) (Guest, time.Duration, error) {
		vm.Stop(context.WithoutCancel(ctx), time.Second)
		return nil, 0, &RestoreError{Err: err}
	}
	if o.Started != nil {
		if err := o.Started(vm); err != nil {
			return fail(err)
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, err := qmp.Dial(qctx, cfg.QMPSocket, qmp.WithLogger(cfg.Log))
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	if err := RestoreState(qctx, c, o.State); err != nil {
		return fail(explainExit(vm, cfg.Output, err))
	}
	load := time.Since(start)
	if o.Consume != nil {
		if err := o.Consume(); err != nil {
			return fail(fmt.Errorf("remove the used state: %w", err))
		}
	}
	if err := c.Cont(qctx); err != nil {
		return fail(err)
	}
	id := "resume-" + randomID()
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return fail(err)
	}
	g := newResumed(vm, id)
	// After the filter is in place: its answer must not be missed.
	if err := vm.Send(proto.Request{Op: proto.OpResume, ID: id, Time: time.Now(), Entropy: entropy, Runtime: o.Runtime}); err != nil {
		// The guest runs: not a restore failure, the session's
		// deadline will tell.
		cfg.logf("send resume request: %v", err)
	}
	return g, load, nil
}

func (cfg Config) logf(format string, args ...any) {
	if cfg.Log != nil {
		cfg.Log.Debug(fmt.Sprintf(format, args...))
	}
}

// explainExit adds QEMU's last words to err when QEMU has ended: a state
// QEMU refused makes it exit, and its log (output) says why.
func explainExit(vm *VM, output string, err error) error {
	select {
	case <-vm.Exited():
	case <-time.After(500 * time.Millisecond):
		return err
	}
	b, _ := os.ReadFile(output)
	if last := command.LastLines(strings.TrimSpace(string(b)), 2); len(last) > 0 {
		return fmt.Errorf("%w; qemu: %s", err, strings.Join(last, "; "))
	}
	return fmt.Errorf("%w; qemu exited (%v)", err, vm.ExitErr())
}

// resumed is a resumed guest whose events start at the agent's hello for
// the resume request id.
type resumed struct {
	*VM
	events chan event.Event
}

func newResumed(vm *VM, id string) *resumed {
	r := &resumed{VM: vm, events: make(chan event.Event, 256)}
	go func() {
		defer close(r.events)
		started := false
		for e := range vm.Events() {
			if !started {
				started = e.Kind == event.Hello && e.Fields[proto.FieldReq] == id
				if !started {
					continue
				}
			}
			r.events <- e
		}
	}()
	return r
}

func (r *resumed) Events() <-chan event.Event { return r.events }
