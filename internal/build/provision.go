package build

import (
	"context"
	"errors"
	"fmt"
	"os"

	"path/filepath"
	"strconv"
	"time"

	"github.com/emu-dev/emu/internal/agent"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/guest"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// Guest-side allowances, before scaling for the accelerator.
const (
	helloTimeout    = 45 * time.Second // kernel to agent hello
	poweroffTimeout = 20 * time.Second // done to QEMU exit
	consoleTail     = 30
)

// provision boots the disk, runs the bake in the guest and waits for it to
// power off. It decides on whichever comes first: the agent's done or
// failed, QEMU exiting, a timeout, or ctx ending; no polling.
func (b *builder) provision(ctx context.Context) (map[string]string, error) {
	s := b.opts.Stack
	scale := b.opts.Accel.TimeoutScale
	total := scaled(helloTimeout+poweroffTimeout, scale) + 2*time.Minute
	for _, st := range s.Bake {
		total += st.Timeout.D()
	}
	for _, name := range s.ServiceNames() {
		total += s.Services[name].Health.Timeout.D()
	}
	total += b.bins.budget
	ctx, cancel := context.WithTimeout(ctx, total)
	defer cancel()

	fields, err := b.provisionBoot(ctx, total)
	var be *Error
	if errors.As(err, &be) && be.crash != "" && !b.helloSeen && ctx.Err() == nil {
		// The kernel died before the agent started: the bake has not
		// begun. Under TCG that is rare, and another boot works.
		b.emit(event.New(event.Log, "provision", machine.BootAgain(be.crash)))
		serial := filepath.Join(b.logs, store.SerialLog)
		_ = os.Rename(serial, serial+".1")
		fields, err = b.provisionBoot(ctx, total)
	}
	return fields, err
}

// provisionBoot is one boot of the provisioning guest, to its power-off.
func (b *builder) provisionBoot(ctx context.Context, total time.Duration) (map[string]string, error) {
	s := b.opts.Stack
	scale := b.opts.Accel.TimeoutScale
	raw := b.rawDisk()
	m, err := machine.Start(ctx, machine.Config{
		Name:    "emu-build-" + s.Name,
		Arch:    s.Base.Arch,
		VM:      s.VM,
		Accel:   b.opts.Accel,
		Kernel:  b.kernel,
		Initrd:  b.initrd,
		Cmdline: guest.Cmdline(agent.Provision),
		Drive:   qemu.Drive{Path: raw, Format: "raw", Discard: true, Cache: "unsafe"},
		Extra:   b.imageDrives(),
		Serial:  filepath.Join(b.logs, store.SerialLog),
		Output:  filepath.Join(b.logs, store.QEMULog),
		QEMU:    b.opts.QEMU,
		Log:     b.opts.Log,
	})
	if err != nil {
		return nil, err
	}
	defer m.Stop(context.WithoutCancel(ctx), 5*time.Second)

	hello := time.NewTimer(scaled(helloTimeout, scale))
	defer hello.Stop()
	for {
		select {
		case e, ok := <-m.Events:
			if !ok {
				return nil, b.guestGone(m, "the agent's channel closed before it reported done")
			}
			if e.Kind.Terminal() {
				// The guest's verdict; the build's own done or failed
				// ends the build's stream.
				b.record(e)
			} else {
				b.emit(e)
				b.observe(e)
			}
			switch e.Kind {
			case event.Hello:
				b.helloSeen = true
				hello.Stop()
				req := provisionRequest(s, b.imageIDs)
				req.Optimize = b.bins.items
				req.Images = b.imageRequests()
				req.AckSteps = true
				if err := m.Send(req); err != nil {
					return nil, err
				}
			case event.StepStart:
				// The step waits for this: once the agent has it, a crash
				// in the step is known to be the step's.
				// A send that fails means the guest is going; its end
				// is reported from the process or the channel.
				_ = m.Send(event.Request{Op: event.OpAck, ID: e.Name})
			case event.Failed:
				m.Stop(context.WithoutCancel(ctx), 2*time.Second)
				return nil, b.stepFailure(e)
			case event.Done:
				return b.awaitPowerOff(ctx, m, raw)
			}
		case <-m.Proc.Done():
			// The agent's verdict may still be in the channel: it flushes
			// its events, then powers off, and select picks at random
			// among what is ready.
			switch e, ok := b.drain(m); {
			case ok && e.Kind == event.Failed:
				return nil, b.stepFailure(e)
			case ok && e.Kind == event.Done:
				return b.awaitPowerOff(ctx, m, raw)
			}
			return nil, b.guestGone(m, "qemu exited before provisioning finished")
		case <-hello.C:
			return nil, b.consoleFailure(m, fmt.Errorf("the guest agent did not report within %s of boot", scaled(helloTimeout, scale)))
		case <-ctx.Done():
			err := ctx.Err()
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("provisioning took longer than %s: %w", total.Round(time.Second), err)
			} else {
				err = fmt.Errorf("interrupted: %w", err)
			}
			be := b.consoleFailure(m, err)
			be.Step = b.runningStep()
			return nil, be
		}
	}
}

// awaitPowerOff waits for the guest to power itself off after done, so the
// disk is clean, then reports the disk's size.
func (b *builder) awaitPowerOff(ctx context.Context, m *machine.VM, raw string) (map[string]string, error) {
	t := time.NewTimer(scaled(poweroffTimeout, b.opts.Accel.TimeoutScale))
	defer t.Stop()
	select {
	case <-m.Proc.Done():
	case <-t.C:
		// The agent synced and trimmed before done; QEMU flushes on SIGTERM.
		b.emit(event.New(event.Log, "provision", "guest did not power off in time; stopping qemu"))
		m.Stop(ctx, 5*time.Second)
	case <-ctx.Done():
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	alloc, err := disk.Allocated(raw)
	if err != nil {
		return nil, err
	}
	return map[string]string{"size": strconv.FormatInt(alloc, 10)}, nil
}

// BakeServices are the services started for the bake: those the base
// provides (unit:), not the stack's own commands (run:), which usually need
// what the bake makes, such as a migrated schema.
func BakeServices(s *spec.Stack) []string {
	var names []string
	for _, name := range s.StartOrder() {
		if s.Services[name].Unit != "" {
			names = append(names, name)
		}
	}
	return names
}

// provisionRequest is the bake as the agent runs it; ids are the image IDs
// of the stack's image references.
func provisionRequest(s *spec.Stack, ids map[string]string) event.Request {
	req := event.Request{Op: event.OpProvision, Slim: s.Slim.Remove, Services: BakeServices(s), Prune: s.UsesContainers()}
	if s.UsesContainers() {
		req.Slim = append(append([]string(nil), s.Slim.Remove...), spec.EngineSlim...)
	}
	for _, st := range s.Bake {
		req.Steps = append(req.Steps, event.Step{
			Name: st.Name, Run: st.Run, Env: st.Env, User: st.User, Dir: st.Dir, Timeout: st.Timeout.D(),
		})
	}
	req.Steps = containerSteps(s, ids, req.Steps)
	req.Volumes = guest.Volumes(s)
	return req
}

// stepFailure turns the agent's failed event into the build's error, with
// the failing step's last output.
func (b *builder) stepFailure(e event.Event) *Error {
	st := b.snapshot()
	be := &Error{Stage: "provision", Step: e.Name, Err: errors.New(e.Msg)}
	for _, it := range st.Steps {
		if it.Name == e.Name {
			be.Code, be.Tail, be.TailFrom = it.Code, it.Tail, "step "+e.Name+" output"
			be.Err = errors.New(it.Msg)
			if it.Code != nil && *it.Code >= 0 {
				be.Err = fmt.Errorf("exited with code %d", *it.Code)
			}
			be.Hint = "fix the bake step and run emu build again; the step's output is above"
			return be
		}
	}
	for _, it := range st.Services {
		if it.Name == e.Name && it.State == event.Unhealthy {
			be.Step = "service " + e.Name
			be.Err = errors.New(it.Msg)
			if j := it.Fields["journal"]; j != "" {
				be.Tail, be.TailFrom = command.LastLines(j, 50), "its journal"
			}
			return be
		}
	}
	return be
}

// guestGone reports QEMU or the agent's channel ending without a verdict.
// A closed channel usually means QEMU is exiting, so it waits briefly to
// say which.
func (b *builder) guestGone(m *machine.VM, why string) *Error {
	select {
	case <-m.Proc.Done():
	case <-time.After(3 * time.Second):
	}
	b.drain(m)
	msg := why
	if m.Proc.Exited() {
		msg = "qemu exited before provisioning finished"
		if err := m.Proc.Wait(); err != nil {
			msg += " (" + err.Error() + ")"
		}
	}
	be := b.consoleFailure(m, errors.New(msg))
	be.Step = b.runningStep()
	return be
}

// drain takes the events still in flight when QEMU ended, so the failure
// names the step that was really running. It returns the agent's verdict
// (done or failed) when one was among them.
func (b *builder) drain(m *machine.VM) (verdict event.Event, ok bool) {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case e, open := <-m.Events:
			if !open {
				return verdict, ok
			}
			if e.Kind.Terminal() {
				b.record(e)
				verdict, ok = e, true
			} else {
				b.emit(e)
				b.observe(e)
			}
		case <-t.C:
			return verdict, ok
		}
	}
}

// consoleFailure is a failure explained by the serial console's last lines.
func (b *builder) consoleFailure(m *machine.VM, err error) *Error {
	be := &Error{Stage: "provision", Err: err}
	if c, rerr := machine.ReadConsole(m.SerialPath, consoleTail); rerr == nil {
		be.Err, be.Tail, be.TailFrom, be.crash = c.Explain(err), c.Tail, "the serial console", c.Crash
	}
	return be
}

func scaled(d time.Duration, scale float64) time.Duration {
	if scale < 1 {
		scale = 1
	}
	return time.Duration(float64(d) * scale)
}

// runningStep names the bake step or service running, "" when only the
// provision stage itself is (the error already names the stage).
func (b *builder) runningStep() string {
	if r := b.snapshot().Running(); r != "provision" {
		return r
	}
	return ""
}
