package agent

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// resumeHooks records what a resume asked of the guest.
type resumeHooks struct {
	mu      sync.Mutex
	clock   time.Time
	entropy []byte
	rt      *proto.Runtime
	changed bool
}

func (r *resumeHooks) options(o *Options) {
	o.SetClock = func(t time.Time) error { r.mu.Lock(); r.clock = t; r.mu.Unlock(); return nil }
	o.AddEntropy = func(b []byte) error { r.mu.Lock(); r.entropy = b; r.mu.Unlock(); return nil }
	o.ApplyRuntime = func(_ context.Context, rt proto.Runtime) (bool, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.rt = &rt
		return r.changed, nil
	}
}

func resumeServices(t *testing.T) []proto.Service {
	return []proto.Service{
		{Name: "db", Unit: "postgresql.service", Health: proto.Health{TCP: listen(t)}},
		{Name: "api", Unit: "emu-api.service", After: []string{"db"}, Health: proto.Health{TCP: listen(t)}, RuntimeEnv: true},
	}
}

func TestResumeRestartsWhatReadsAChangedEnv(t *testing.T) {
	hooks := &resumeHooks{changed: true}
	opts := Options{Config: proto.Config{Stack: "demo", Services: resumeServices(t)}}
	hooks.options(&opts)
	h := startAgent(t, opts)
	h.next(event.Ready, "")
	before := len(h.sys.Calls())

	now := time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC)
	rt := proto.Runtime{Instance: "demo", Env: map[string]string{"KEY": "new"}}
	h.send(proto.Request{Op: proto.OpResume, ID: "r1", Time: now, Entropy: []byte("0123456789abcdef"), Runtime: &rt})
	hello := h.next(event.Hello, "")
	if hello.Fields[proto.FieldReq] != "r1" || hello.Fields[proto.FieldResumed] != "true" {
		t.Errorf("resume's hello = %v, want req r1 and resumed", hello.Fields)
	}
	ready := h.next(event.Ready, "")
	if ready.Fields[proto.FieldReq] != "r1" || ready.Fields[proto.FieldRestarted] != "api" {
		t.Errorf("resume's ready = %v, want req r1, restarted api", ready.Fields)
	}
	hooks.mu.Lock()
	defer hooks.mu.Unlock()
	if !hooks.clock.Equal(now) || string(hooks.entropy) != "0123456789abcdef" || hooks.rt == nil || hooks.rt.Env["KEY"] != "new" {
		t.Errorf("hooks got clock %v, entropy %q, runtime %+v", hooks.clock, hooks.entropy, hooks.rt)
	}
	calls := h.sys.Calls()[before:]
	// The api restarts (it reads the env); the stock unit does not.
	if want := []string{"stop emu-api.service", "start emu-api.service"}; !slices.Equal(calls, want) {
		t.Errorf("init system calls on resume = %q, want %q", calls, want)
	}
}

func TestResumeWithTheSameEnvRestartsNothing(t *testing.T) {
	hooks := &resumeHooks{changed: false}
	opts := Options{Config: proto.Config{Stack: "demo", Services: resumeServices(t)}}
	hooks.options(&opts)
	h := startAgent(t, opts)
	h.next(event.Ready, "")
	before := len(h.sys.Calls())
	h.send(proto.Request{Op: proto.OpResume, ID: "r2", Runtime: &proto.Runtime{Instance: "demo"}})
	h.next(event.Hello, "")
	from := len(h.got)
	ready := h.next(event.Ready, "")
	// Every service is probed again before ready.
	for _, name := range []string{"db", "api"} {
		if _, ok := find(h.got[from:], event.ServiceHealthy, name); !ok {
			t.Errorf("no service.healthy %s between the resume's hello and ready:\n%s", name, dump(h.got))
		}
	}
	if ready.Fields[proto.FieldReq] != "r2" || ready.Fields[proto.FieldRestarted] != "" {
		t.Errorf("ready = %v", ready.Fields)
	}
	if calls := h.sys.Calls()[before:]; len(calls) != 0 {
		t.Errorf("init system calls on a resume with the same env: %q", calls)
	}
}

func TestResumeReportsAServiceThatDidNotSurvive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	opts := Options{Config: proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "db", Unit: "postgresql.service", Health: proto.Health{TCP: port, Timeout: 300 * time.Millisecond}},
	}}}
	h := startAgent(t, opts)
	h.next(event.Ready, "")
	// Its listener is gone: as if it died across the suspend.
	ln.Close()
	h.send(proto.Request{Op: proto.OpResume, ID: "r3"})
	h.next(event.Hello, "")
	h.next(event.ServiceUnhealthy, "db")
	failed := h.next(event.Failed, "db")
	if failed.Fields[proto.FieldReq] != "r3" {
		t.Errorf("failed = %v, want req r3", failed.Fields)
	}
}

// restartingSystem serves one TCP health port: Stop closes its listener,
// Start opens it again after a while, as a real service takes time to
// come back.
type restartingSystem struct {
	fakeSystem
	port  int
	delay time.Duration
	mu2   sync.Mutex
	ln    net.Listener
}

func (r *restartingSystem) Start(ctx context.Context, unit string) error {
	r.record("start " + unit)
	go func() {
		time.Sleep(r.delay)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)))
		if err != nil {
			return
		}
		r.mu2.Lock()
		r.ln = ln
		r.mu2.Unlock()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}()
	return nil
}

func (r *restartingSystem) Stop(ctx context.Context, unit string) error {
	r.record("stop " + unit)
	r.mu2.Lock()
	defer r.mu2.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	return nil
}

func (r *restartingSystem) close() { r.Stop(context.Background(), "") }

// TestResumeRestartIsNotReportedUnhealthy: while a resume restarts a
// service, the periodic health watch must not report it (the host would
// fail the start on that service.unhealthy).
func TestResumeRestartIsNotReportedUnhealthy(t *testing.T) {
	sys := &restartingSystem{port: closedPort(t), delay: 400 * time.Millisecond}
	t.Cleanup(sys.close)
	hooks := &resumeHooks{changed: true}
	opts := Options{
		Config: proto.Config{Stack: "demo", Services: []proto.Service{
			{Name: "api", Unit: "emu-api.service", Health: proto.Health{TCP: sys.port, Timeout: 10 * time.Second}, RuntimeEnv: true},
		}},
		System: sys, WatchInterval: 20 * time.Millisecond,
	}
	hooks.options(&opts)
	h := startAgent(t, opts)
	h.next(event.Ready, "")
	// Let the watch run a few rounds on the healthy service first.
	time.Sleep(100 * time.Millisecond)
	h.send(proto.Request{Op: proto.OpResume, ID: "r4", Runtime: &proto.Runtime{Instance: "demo"}})
	h.next(event.Hello, "")
	from := len(h.got)
	ready := h.next(event.Ready, "")
	if ready.Fields[proto.FieldReq] != "r4" {
		t.Fatalf("ready = %v", ready.Fields)
	}
	for _, e := range h.got[from:] {
		if e.Kind == event.ServiceUnhealthy {
			t.Errorf("service reported unhealthy while the resume restarted it:\n%s", dump(h.got))
		}
	}
}
