package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
)

// Guest is a booted QEMU and its agent channel: what a Session drives.
// *VM is the real one; the session's tests drive a fake.
type Guest interface {
	// Events delivers the agent's events; it is closed when the channel
	// ends.
	Events() <-chan event.Event
	// Exited is closed once QEMU has exited and been reaped.
	Exited() <-chan struct{}
	// ExitErr is how QEMU ended, once Exited is closed.
	ExitErr() error
	Send(proto.Request) error
	// Console is the serial console's log file.
	Console() string
	// Stop ends QEMU: SIGTERM, up to grace, SIGKILL.
	Stop(ctx context.Context, grace time.Duration) error
	// Close lets go of the agent channel and leaves QEMU running.
	Close() error
}

// Tail lengths of a guest failure: the console's last lines, a service's
// journal.
const (
	consoleTail = 30
	journalTail = 30
)

// Session drives one guest from QEMU's start to its verdict. It is the one
// place that follows a booting guest: provisioning, the boot check and emu
// up each say only how to boot, what to send on hello and what counts as
// done. It owns the event loop, the hello deadline, the early-crash retry
// and the failure's explanation.
//
// A session is used once: Run, then PowerOff or Shutdown when the guest
// should end.
type Session struct {
	// Op names the session in errors ("verify", "up"); "" in a build,
	// whose error names the stage.
	Op string
	// Boot starts QEMU and connects to the agent's channel. It is called
	// a second time when the guest kernel crashed before the agent's
	// hello: nothing of the image ran then, and under TCG such a crash
	// is rare enough that the next boot works.
	Boot func(ctx context.Context) (Guest, error)
	// Retry runs before that second boot (to keep the first console).
	Retry func()
	// Until ends the wait: event.Ready (every service healthy) or
	// event.Done (the agent finished its work and powers off).
	Until event.Kind
	// Hello is sent to the agent once it says hello.
	Hello []proto.Request
	// AckSteps acknowledges each step.start, as Request.AckSteps asks.
	AckSteps bool
	// HelloTimeout bounds boot to hello; Timeout the whole of Run, retry
	// included. Both are taken as given: scale them first.
	HelloTimeout time.Duration
	Timeout      time.Duration
	// Emit receives every event but the agent's own verdict (done,
	// failed), which goes to Verdict: the caller's stream ends with a
	// verdict of its own.
	Emit    func(event.Event)
	Verdict func(event.Event)
	// FallBack, when set, is asked once after a boot whose agent never
	// said hello in time: a broken accelerator looks like that. When it
	// returns true (the caller switched its Boot to another accelerator
	// and may have changed HelloTimeout) the session boots once more.
	FallBack func(s *Session) bool
	// Stop ends a guest that failed; default: SIGTERM, 5 s, SIGKILL.
	Stop func(ctx context.Context, g Guest)
	Log  *slog.Logger

	guest   Guest
	status  event.Status
	timings Timings
}

// Guest is the guest of the last boot, nil before Run.
func (s *Session) Guest() Guest { return s.guest }

// Status is the session's events folded.
func (s *Session) Status() event.Status { return s.status }

// Timings are those of the last boot: QEMU's start, hello and services
// from the boot's start; Ready from Run's start.
func (s *Session) Timings() Timings { return s.timings }

// Run boots the guest and follows it until Until, a failure, or ctx. A
// guest that fails is stopped (Stop) before Run returns; one that reached
// Until is left as it is. Every failure of the guest is a *GuestError.
func (s *Session) Run(ctx context.Context) error {
	if s.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.Timeout)
		defer cancel()
	}
	start := time.Now()
	fellBack := false
	for attempt := 1; ; attempt++ {
		err := s.boot(ctx)
		if err == nil {
			s.timings.Ready = time.Since(start)
			return nil
		}
		if errors.As(err, new(noHelloError)) && s.FallBack != nil && !fellBack && ctx.Err() == nil && s.FallBack(s) {
			fellBack = true
			attempt--
			if s.Retry != nil {
				s.Retry()
			}
			continue
		}
		crash := earlyCrash(err)
		if attempt > 1 || crash == "" || ctx.Err() != nil {
			return err
		}
		msg := BootAgain(crash)
		s.emit(event.New(event.Log, s.Op, msg))
		if s.Log != nil {
			s.Log.Warn(msg)
		}
		if s.Retry != nil {
			s.Retry()
		}
	}
}

// boot is one boot, from QEMU's start to the verdict.
func (s *Session) boot(ctx context.Context) error {
	start := time.Now()
	s.status, s.timings = event.Status{}, Timings{}
	g, err := s.Boot(ctx)
	if err != nil {
		return err
	}
	s.guest = g
	s.timings.Start = time.Since(start)
	err = s.await(ctx, g, time.Now())
	if err != nil {
		if ge := AsGuestError(err); ge != nil {
			ge.hello = s.status.Hello != nil
		}
		s.stop(ctx, g)
	}
	return err
}

// Abort stops the session's guest as a failed one is stopped (Stop), for
// a caller whose own step after Run failed.
func (s *Session) Abort(ctx context.Context) {
	if s.guest != nil {
		s.stop(ctx, s.guest)
	}
}

func (s *Session) stop(ctx context.Context, g Guest) {
	ctx = context.WithoutCancel(ctx)
	if s.Stop != nil {
		s.Stop(ctx, g)
		return
	}
	g.Stop(ctx, 5*time.Second)
}

// noHelloError: the agent did not say hello in time.
type noHelloError struct{ after time.Duration }

func (e noHelloError) Error() string {
	return fmt.Sprintf("the guest agent did not report within %s of boot", e.after)
}

// ending is why follow returned.
type ending int

const (
	endEvent  ending = iota // the handler ended it
	endClosed               // the agent's channel closed
	endExited               // QEMU exited
	endTimer                // the timer given fired
	endCtx                  // ctx ended
)

// follow is the one loop over a guest's events: it passes each event to
// handle until handle says stop (or fails), the channel closes, QEMU
// exits, timer fires or ctx ends, and says which. The callers give each
// ending its meaning.
func follow(ctx context.Context, g Guest, timer <-chan time.Time, handle func(event.Event) (bool, error)) (ending, error) {
	events := g.Events()
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return endClosed, nil
			}
			// An interrupt wins over events still queued: select picks at
			// random among what is ready, and a Ctrl-C must not turn
			// into a success because ready was already in the channel.
			if err := ctx.Err(); err != nil {
				return endCtx, err
			}
			if stop, err := handle(e); stop || err != nil {
				return endEvent, err
			}
		case <-g.Exited():
			return endExited, nil
		case <-timer:
			return endTimer, nil
		case <-ctx.Done():
			return endCtx, ctx.Err()
		}
	}
}

// await follows one boot to its verdict.
func (s *Session) await(ctx context.Context, g Guest, begin time.Time) error {
	var hello <-chan time.Time
	var timer *time.Timer
	if s.HelloTimeout > 0 {
		timer = time.NewTimer(s.HelloTimeout)
		defer timer.Stop()
		hello = timer.C
	}
	end, err := follow(ctx, g, hello, func(e event.Event) (bool, error) {
		if e.Kind == event.Hello && timer != nil {
			// The deadline is the boot's to the agent, not the
			// services' after it (Timeout bounds those). Since Go 1.23
			// a stopped timer's channel delivers nothing.
			timer.Stop()
		}
		return s.handle(g, e, begin)
	})
	switch end {
	case endEvent:
		return err
	case endClosed:
		return s.gone(g, "the agent's channel closed before "+s.goal())
	case endExited:
		// The verdict may still be in the channel: the agent flushes its
		// events, then powers off, and select picks at random among
		// what is ready.
		if done, err := s.drain(g, begin); done {
			return err
		}
		return s.gone(g, "qemu exited before "+s.goal())
	case endTimer:
		return s.consoleError(g, noHelloError{s.HelloTimeout})
	default:
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%s within %s: %w", s.late(), s.Timeout.Round(time.Second), err)
		} else {
			err = fmt.Errorf("interrupted: %w", err)
		}
		ge := s.consoleError(g, err)
		s.running(ge)
		return ge
	}
}

// handle takes one event of the boot: it folds it, passes it on, answers
// hello and step starts, and says whether it ends the boot.
func (s *Session) handle(g Guest, e event.Event, begin time.Time) (bool, error) {
	s.status = event.Fold(s.status, e)
	if e.Kind.Terminal() {
		if s.Verdict != nil {
			s.Verdict(e)
		}
	} else {
		s.emit(e)
	}
	switch e.Kind {
	case event.Hello:
		s.timings.Hello = time.Since(begin)
		for _, r := range s.Hello {
			if err := g.Send(r); err != nil {
				return true, err
			}
		}
	case event.StepStart:
		if s.AckSteps {
			// A send that fails means the guest is going; its end is
			// reported from QEMU's exit or the channel's.
			_ = g.Send(proto.Request{Op: proto.OpAck, ID: e.Name})
		}
	case event.ServiceUnhealthy:
		if s.Until == event.Ready {
			return true, s.failure(g, e)
		}
	case event.Failed:
		return true, s.failure(g, e)
	}
	if e.Kind == s.Until {
		s.timings.Services = time.Since(begin) - s.timings.Hello
		return true, nil
	}
	return false, nil
}

// drain takes what is still in the channel after QEMU exited. It reports
// done when the events held the agent's verdict: a failure, or Done (the
// agent finished and powered off, which is success).
func (s *Session) drain(g Guest, begin time.Time) (bool, error) {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	var verdict bool
	_, err := follow(context.Background(), noExit{g}, t.C, func(e event.Event) (bool, error) {
		stop, err := s.handle(g, e, begin)
		if err != nil || (stop && e.Kind == event.Done) {
			verdict = true
		}
		return stop, err
	})
	return verdict, err
}

// noExit is g without its exit: drain runs after it.
type noExit struct{ Guest }

func (noExit) Exited() <-chan struct{} { return nil }

// gone explains a guest whose channel closed or whose QEMU exited without
// a verdict. A closed channel usually means QEMU is exiting, so it waits
// briefly to say which.
func (s *Session) gone(g Guest, why string) error {
	select {
	case <-g.Exited():
	case <-time.After(3 * time.Second):
	}
	select {
	case <-g.Exited():
		why = "qemu exited before " + s.goal()
		if err := g.ExitErr(); err != nil {
			why += " (" + err.Error() + ")"
		}
	default:
	}
	ge := s.consoleError(g, errors.New(why))
	s.running(ge)
	return ge
}

// failure turns the agent's failed event, or a service's unhealthy one,
// into the error, with what to read: the step's output, the service's
// journal, or the console.
func (s *Session) failure(g Guest, e event.Event) *GuestError {
	ge := &GuestError{Op: s.Op, Err: errors.New(e.Msg)}
	for _, it := range s.status.Steps {
		if it.Name == e.Name {
			ge.Step, ge.Code, ge.Tail, ge.TailFrom = e.Name, it.Code, it.Tail, "step "+e.Name+" output"
			ge.Err = errors.New(it.Msg)
			if it.Code != nil && *it.Code >= 0 {
				ge.Err = fmt.Errorf("exited with code %d", *it.Code)
			}
			ge.Hint = "fix the bake step and run emu build again; the step's output is above"
			return ge
		}
	}
	for _, it := range s.status.Services {
		if it.Name == e.Name {
			ge.Service = e.Name
			if it.State == event.Unhealthy && it.Msg != "" {
				ge.Err = errors.New(it.Msg)
			}
			if j := it.Fields[proto.FieldJournal]; j != "" {
				ge.Tail, ge.TailFrom = command.LastLines(j, journalTail), "its journal"
			}
			return ge
		}
	}
	if e.Name == "" {
		return s.consoleError(g, ge.Err)
	}
	// A stage of the agent's own work (optimize, load, slim).
	ge.Step = e.Name
	return ge
}

// consoleError is a failure explained by the serial console's last lines
// and, when the kernel crashed, its crash line.
func (s *Session) consoleError(g Guest, err error) *GuestError {
	ge := &GuestError{Op: s.Op, Err: err}
	if c, rerr := ReadConsole(g.Console(), consoleTail); rerr == nil {
		ge.Err, ge.Tail, ge.TailFrom, ge.Crash = c.Explain(err), c.Tail, "the serial console", c.Crash
	}
	return ge
}

// running names what was under way in ge: the bake step or agent stage
// running, or for a boot to ready the first service not healthy.
func (s *Session) running(ge *GuestError) {
	if r := s.status.Running(); r != "" {
		ge.Step = r
		return
	}
	if s.Until == event.Ready {
		for _, it := range s.status.Services {
			if it.State != event.Healthy {
				ge.Service = it.Name
				return
			}
		}
	}
}

func (s *Session) goal() string {
	if s.Until == event.Ready {
		return "every service was healthy"
	}
	return "the agent reported done"
}

// late says what did not happen in time.
func (s *Session) late() string {
	if s.Until == event.Ready {
		return "not ready"
	}
	return "the agent did not report done"
}

func (s *Session) emit(e event.Event) {
	if s.Emit != nil {
		s.Emit(e)
	}
}

// PowerOff waits up to d for QEMU to exit by itself, as a guest does after
// the agent's done or a shutdown request, passing its events on; a guest
// still running then is stopped. It returns how long that took.
func (s *Session) PowerOff(ctx context.Context, d time.Duration) (time.Duration, error) {
	g := s.guest
	start := time.Now()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		end, err := follow(ctx, g, t.C, func(e event.Event) (bool, error) {
			if !e.Kind.Terminal() {
				s.emit(e)
			}
			return false, nil
		})
		switch end {
		case endClosed:
			// QEMU is exiting; wait for it without the channel.
			g = noEvents{g}
			continue
		case endTimer:
			s.emit(event.New(event.Log, s.Op, "guest did not power off in time; stopping qemu"))
			s.stop(ctx, s.guest)
		case endCtx:
			s.stop(ctx, s.guest)
			return time.Since(start), fmt.Errorf("interrupted: %w", err)
		}
		s.guest.Close()
		return time.Since(start), nil
	}
}

// Shutdown asks the agent to stop the services and power the guest off,
// then waits for that as PowerOff does.
func (s *Session) Shutdown(ctx context.Context, d time.Duration) (time.Duration, error) {
	if err := s.guest.Send(proto.Request{Op: proto.OpShutdown}); err != nil {
		s.stop(ctx, s.guest)
		return 0, err
	}
	return s.PowerOff(ctx, d)
}

// noEvents is g once its channel has closed.
type noEvents struct{ Guest }

func (noEvents) Events() <-chan event.Event { return nil }

// FallBackToTCG is a FallBack for a guest started under *acc: under KVM it
// switches *acc to TCG (remembered for this boot of the host, see
// accel.Choice.FallBack), stretches the hello deadline to TCG's and says
// so. Anything else is not the accelerator's fault: no second boot.
func FallBackToTCG(acc *accel.Choice, emit func(event.Event)) func(*Session) bool {
	return func(s *Session) bool {
		if acc.Accel != qemu.KVM {
			return false
		}
		why := fmt.Sprintf("a guest did not reach its agent under kvm within %s, though the kvm probe ran", s.HelloTimeout)
		*acc = acc.FallBack(why)
		s.HelloTimeout = acc.Scale(HelloTimeout)
		msg := why + "; booting it again under tcg"
		if emit != nil {
			emit(event.New(event.Log, s.Op, msg))
		}
		if s.Log != nil {
			s.Log.Warn(msg)
		}
		return true
	}
}
