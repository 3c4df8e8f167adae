package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
)

// fakeGuest is a QEMU and agent channel the test scripts: it sends the
// events given, can exit, and records what the session sent and did.
type fakeGuest struct {
	events  chan event.Event
	exited  chan struct{}
	exitErr error
	console string

	mu      sync.Mutex
	sent    []proto.Request
	stopped int
	closed  int
	once    sync.Once
	closeCh sync.Once
}

func newFake(t *testing.T, console string) *fakeGuest {
	t.Helper()
	path := filepath.Join(t.TempDir(), "serial.log")
	if err := os.WriteFile(path, []byte(console), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fakeGuest{events: make(chan event.Event, 64), exited: make(chan struct{}), console: path}
}

func (f *fakeGuest) Events() <-chan event.Event { return f.events }
func (f *fakeGuest) Exited() <-chan struct{}    { return f.exited }
func (f *fakeGuest) ExitErr() error             { return f.exitErr }
func (f *fakeGuest) Console() string            { return f.console }

func (f *fakeGuest) Send(r proto.Request) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, r)
	return nil
}

func (f *fakeGuest) Stop(context.Context, time.Duration) error {
	f.mu.Lock()
	f.stopped++
	f.mu.Unlock()
	f.exit()
	return nil
}

func (f *fakeGuest) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

// exit ends QEMU: like the real channel, the events end with it (those
// still buffered stay readable).
func (f *fakeGuest) exit() {
	f.closeEvents()
	f.once.Do(func() { close(f.exited) })
}

func (f *fakeGuest) closeEvents() { f.closeCh.Do(func() { close(f.events) }) }

func (f *fakeGuest) send(evs ...event.Event) {
	for _, e := range evs {
		f.events <- e
	}
}

func (f *fakeGuest) requests() []proto.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]proto.Request(nil), f.sent...)
}

func (f *fakeGuest) stops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped
}

func ev(kind event.Kind, name, msg string) event.Event { return event.New(kind, name, msg) }

// session returns a session over the fakes, booted in order, and the
// events it passed on.
func session(until event.Kind, guests ...*fakeGuest) (*Session, *event.Recorder, *int) {
	rec := &event.Recorder{}
	boots := 0
	s := &Session{
		Op: "up",
		Boot: func(context.Context) (Guest, error) {
			if boots >= len(guests) {
				return nil, errors.New("no more fake guests")
			}
			boots++
			return guests[boots-1], nil
		},
		Until:        until,
		HelloTimeout: 5 * time.Second,
		Timeout:      10 * time.Second,
		Emit:         rec.Emit,
		Verdict:      rec.Emit,
	}
	return s, rec, &boots
}

const panicConsole = "[    1.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\n[    1.1] ---[ end Kernel panic ]---\n"

func guestErr(t *testing.T, err error) *GuestError {
	t.Helper()
	ge := AsGuestError(err)
	if ge == nil {
		t.Fatalf("error = %v (%T), want a *GuestError", err, err)
	}
	return ge
}

func TestSessionReady(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "demo", "agent up"), ev(event.ServiceHealthy, "api", ""), ev(event.Ready, "", ""))
	s, rec, boots := session(event.Ready, g)
	s.Hello = []proto.Request{{Op: proto.OpStatus}}
	if err := s.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if *boots != 1 || g.stops() != 0 {
		t.Errorf("boots=%d stops=%d, want 1 and 0 (a ready guest keeps running)", *boots, g.stops())
	}
	if r := g.requests(); len(r) != 1 || r[0].Op != proto.OpStatus {
		t.Errorf("sent %v, want the hello requests", r)
	}
	if st := s.Status(); !st.Ready || len(rec.Events()) != 3 {
		t.Errorf("status ready=%v, %d events passed on", st.Ready, len(rec.Events()))
	}
	if tm := s.Timings(); tm.Ready <= 0 || tm.Ready < tm.Hello {
		t.Errorf("timings %+v", tm)
	}
}

func TestSessionHelloTimeout(t *testing.T) {
	g := newFake(t, "booting...\nstill booting\n")
	s, _, boots := session(event.Ready, g)
	s.HelloTimeout = 20 * time.Millisecond
	err := s.Run(context.Background())
	ge := guestErr(t, err)
	if !strings.Contains(err.Error(), "did not report within 20ms") || ge.TailFrom != "the serial console" || len(ge.Tail) != 2 {
		t.Errorf("error = %v (tail %q from %q)", err, ge.Tail, ge.TailFrom)
	}
	if *boots != 1 || g.stops() != 1 {
		t.Errorf("boots=%d stops=%d, want one boot, stopped", *boots, g.stops())
	}
}

// TestSessionHelloTimeoutEndsAtHello: the hello deadline bounds the boot
// to the agent, not the services after it.
func TestSessionHelloTimeoutEndsAtHello(t *testing.T) {
	g := newFake(t, "")
	s, _, _ := session(event.Ready, g)
	s.HelloTimeout = 50 * time.Millisecond
	g.send(ev(event.Hello, "demo", "agent up"))
	go func() {
		time.Sleep(200 * time.Millisecond)
		g.send(ev(event.ServiceHealthy, "api", ""), ev(event.Ready, "", ""))
	}()
	if err := s.Run(context.Background()); err != nil {
		t.Fatalf("Run with services slower than the hello deadline: %v", err)
	}
}

func TestSessionCrashBeforeHelloBootsAgain(t *testing.T) {
	crashed := newFake(t, panicConsole)
	crashed.exit()
	good := newFake(t, "")
	good.send(ev(event.Hello, "demo", ""), ev(event.Ready, "", ""))
	s, rec, boots := session(event.Ready, crashed, good)
	retried := 0
	s.Retry = func() { retried++ }
	if err := s.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if *boots != 2 || retried != 1 || crashed.stops() != 1 {
		t.Errorf("boots=%d retried=%d first stopped %d times, want 2, 1, 1", *boots, retried, crashed.stops())
	}
	again := 0
	for _, e := range rec.Events() {
		if e.Kind == event.Log && strings.Contains(e.Msg, "booting it again") {
			again++
		}
	}
	if again != 1 {
		t.Errorf("%d boot-again notes, want 1: %v", again, rec.Events())
	}
}

func TestSessionCrashTwiceGivesUp(t *testing.T) {
	a, b := newFake(t, panicConsole), newFake(t, panicConsole)
	a.exit()
	b.exit()
	s, _, boots := session(event.Ready, a, b)
	err := s.Run(context.Background())
	if ge := guestErr(t, err); ge.Crash == "" || *boots != 2 {
		t.Errorf("error = %v, boots=%d: want the crash named after two boots", err, *boots)
	}
	if want := "qemu exited before every service was healthy: the guest kernel crashed: Kernel panic"; !strings.Contains(err.Error(), want) {
		t.Errorf("error = %v, want %q", err, want)
	}
}

func TestSessionCrashAfterHelloNoRetry(t *testing.T) {
	g := newFake(t, panicConsole)
	g.send(ev(event.Hello, "demo", ""), ev(event.ServiceStarting, "db", ""))
	s, _, boots := session(event.Ready, g)
	go func() {
		// Exit once the session has taken the events.
		for len(g.events) > 0 {
			time.Sleep(time.Millisecond)
		}
		g.exit()
	}()
	err := s.Run(context.Background())
	ge := guestErr(t, err)
	if *boots != 1 || ge.Crash == "" {
		t.Errorf("boots=%d crash=%q: a crash after hello is reported, not retried", *boots, ge.Crash)
	}
	if ge.Service != "db" {
		t.Errorf("service = %q, want db (the one not yet healthy)", ge.Service)
	}
}

// The agent's verdict and QEMU's exit arrive together: select may take
// either first, and both orders must end the same way.
func TestSessionVerdictQueuedAtExit(t *testing.T) {
	for i := range 50 {
		g := newFake(t, "")
		code := 0
		g.send(ev(event.Hello, "", ""), ev(event.StepStart, "migrate", ""),
			event.New(event.StepDone, "migrate", "1s").WithCode(code), ev(event.Done, "", "provisioned"))
		g.exit()
		s, _, _ := session(event.Done, g)
		if err := s.Run(context.Background()); err != nil {
			t.Fatalf("round %d: Run: %v", i, err)
		}
		if _, err := s.PowerOff(context.Background(), time.Second); err != nil {
			t.Fatalf("round %d: PowerOff: %v", i, err)
		}
	}
}

func TestSessionFailureQueuedAtExit(t *testing.T) {
	for i := range 50 {
		g := newFake(t, "")
		g.send(ev(event.Hello, "", ""), ev(event.StepStart, "seed", ""), ev(event.StepOutput, "seed", "boom"),
			event.New(event.StepFailed, "seed", "exited with code 3").WithCode(3), ev(event.Failed, "seed", "exited with code 3"))
		g.exit()
		s, _, _ := session(event.Done, g)
		err := s.Run(context.Background())
		ge := guestErr(t, err)
		if ge.Step != "seed" || ge.Code == nil || *ge.Code != 3 || len(ge.Tail) != 1 || ge.Tail[0] != "boom" {
			t.Fatalf("round %d: error = %v (step %q code %v tail %q)", i, err, ge.Step, ge.Code, ge.Tail)
		}
	}
}

func TestSessionStepFailed(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "", ""), ev(event.StepStart, "migrate", ""), ev(event.StepOutput, "migrate", "relation exists"),
		event.New(event.StepFailed, "migrate", "exited with code 2").WithCode(2), ev(event.Failed, "migrate", "exited with code 2"))
	s, rec, _ := session(event.Done, g)
	s.Op = ""
	s.AckSteps = true
	err := s.Run(context.Background())
	ge := guestErr(t, err)
	if err.Error() != "migrate: exited with code 2" || ge.TailFrom != "step migrate output" || ge.Hint == "" {
		t.Errorf("error = %q (tail from %q, hint %q)", err, ge.TailFrom, ge.Hint)
	}
	if g.stops() != 1 {
		t.Errorf("a failed guest was stopped %d times, want 1", g.stops())
	}
	if r := g.requests(); len(r) != 1 || r[0].Op != proto.OpAck || r[0].ID != "migrate" {
		t.Errorf("sent %v, want one ack of migrate", r)
	}
	if st := event.FoldAll(rec.Events()); !st.Failed {
		t.Errorf("the agent's failed verdict was not passed to Verdict")
	}
}

func TestSessionServiceUnhealthy(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "", ""), ev(event.ServiceStarting, "api", ""),
		ev(event.ServiceUnhealthy, "api", "http 503").With(proto.FieldJournal, "line 1\nlisten: address in use\n"))
	s, _, _ := session(event.Ready, g)
	err := s.Run(context.Background())
	ge := guestErr(t, err)
	if err.Error() != "up: service api: http 503" || ge.TailFrom != "its journal" || len(ge.Tail) != 2 {
		t.Errorf("error = %q (tail %q from %q)", err, ge.Tail, ge.TailFrom)
	}
}

func TestSessionChannelClosedThenExit(t *testing.T) {
	g := newFake(t, "last console line\n")
	g.exitErr = errors.New("signal: killed")
	g.send(ev(event.Hello, "", ""), ev(event.StepStart, "wait", ""))
	g.closeEvents()
	go g.exit()
	s, _, _ := session(event.Done, g)
	err := s.Run(context.Background())
	ge := guestErr(t, err)
	if want := "up: wait: qemu exited before the agent reported done (signal: killed)"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if ge.Tail[0] != "last console line" {
		t.Errorf("tail = %q", ge.Tail)
	}
}

func TestSessionCancel(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "", ""), ev(event.StepStart, "long", ""))
	s, _, _ := session(event.Done, g)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for len(g.events) > 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	err := s.Run(ctx)
	ge := guestErr(t, err)
	if !errors.Is(err, context.Canceled) || ge.Step != "long" || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("error = %v (step %q), want interrupted during long", err, ge.Step)
	}
	if g.stops() != 1 {
		t.Errorf("stopped %d times, want 1", g.stops())
	}
}

func TestSessionDeadline(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "", ""), ev(event.ServiceStarting, "db", ""))
	s, _, _ := session(event.Ready, g)
	s.Timeout = 30 * time.Millisecond
	err := s.Run(context.Background())
	ge := guestErr(t, err)
	if !errors.Is(err, context.DeadlineExceeded) || ge.Service != "db" || !strings.Contains(err.Error(), "not ready within") {
		t.Errorf("error = %v (service %q)", err, ge.Service)
	}
}

func TestSessionShutdown(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "", ""), ev(event.Ready, "", ""))
	s, rec, _ := session(event.Ready, g)
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	go func() {
		g.send(ev(event.ServiceStarting, "api", "stopping"), ev(event.Done, "", "shutting down"))
		g.exit()
	}()
	if _, err := s.Shutdown(context.Background(), 5*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if r := g.requests(); len(r) != 1 || r[0].Op != proto.OpShutdown {
		t.Errorf("sent %v, want shutdown", r)
	}
	if g.stops() != 0 {
		t.Errorf("a guest that powered off was stopped")
	}
	for _, e := range rec.Events() {
		if e.Kind == event.Done {
			t.Errorf("the agent's done after shutdown was passed on: %v", e)
		}
	}
}

func TestSessionPowerOffTimeout(t *testing.T) {
	g := newFake(t, "")
	g.send(ev(event.Hello, "", ""), ev(event.Done, "", ""))
	s, rec, _ := session(event.Done, g)
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PowerOff(context.Background(), 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if g.stops() != 1 {
		t.Errorf("a guest that did not power off was stopped %d times, want 1", g.stops())
	}
	if st := event.FoldAll(rec.Events()); !strings.Contains(rec.Events()[len(rec.Events())-1].Msg, "did not power off") {
		t.Errorf("no note that the guest was stopped: %+v", st)
	}
}

// Ctrl-C while the verdict is already queued: the interrupt wins, every
// time, whatever select would pick.
func TestSessionCancelBeatsQueuedReady(t *testing.T) {
	for i := range 50 {
		g := newFake(t, "")
		g.send(ev(event.Hello, "", ""), ev(event.Ready, "", ""))
		s, _, _ := session(event.Ready, g)
		ctx, cancel := context.WithCancel(context.Background())
		s.Emit = func(e event.Event) {
			if e.Kind == event.Hello {
				cancel()
			}
		}
		if err := s.Run(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: Run = %v, want context.Canceled", i, err)
		}
		if g.stops() != 1 {
			t.Fatalf("round %d: an interrupted guest was stopped %d times, want 1", i, g.stops())
		}
	}
}

// A guest that never reaches its agent under KVM (the probe ran, a real
// kernel does not) boots once more under TCG, with TCG's hello deadline.
func TestSessionFallsBackToTCG(t *testing.T) {
	hung := newFake(t, "")
	good := newFake(t, "")
	good.send(ev(event.Hello, "", ""), ev(event.Ready, "", ""))
	s, rec, boots := session(event.Ready, hung, good)
	s.HelloTimeout = 20 * time.Millisecond
	acc := accel.Choice{Accel: qemu.KVM, TimeoutScale: 1}
	s.FallBack = FallBackToTCG(&acc, rec.Emit)
	if err := s.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if *boots != 2 || acc.Accel != qemu.TCG || s.HelloTimeout != acc.Scale(HelloTimeout) || hung.stops() != 1 {
		t.Errorf("boots=%d accel=%s hello=%s hung stopped %d: want a second boot under tcg", *boots, acc.Accel, s.HelloTimeout, hung.stops())
	}
	if st := event.FoldAll(rec.Events()); !st.Ready {
		t.Errorf("not ready")
	}
	// Under TCG already, or a second time: no more boots.
	hung2 := newFake(t, "")
	s2, _, boots2 := session(event.Ready, hung2, newFake(t, ""))
	s2.HelloTimeout = 20 * time.Millisecond
	s2.FallBack = FallBackToTCG(&acc, nil)
	if err := s2.Run(context.Background()); err == nil || *boots2 != 1 {
		t.Errorf("under tcg: Run = %v after %d boots, want the hello timeout after one", err, *boots2)
	}
}
