package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// wait bounds every wait on the agent: generous, so a slow CI host does not
// fail a test, and short enough that a hang is reported, not waited out.
const wait = 10 * time.Second

// fakeSystem is an init system that records what it was asked.
type fakeSystem struct {
	// failed units report Failed; startErr units fail to start. Both are
	// set before the agent starts and only read after.
	failed   map[string]bool
	startErr map[string]error
	journal  string

	mu    sync.Mutex
	calls []string
	// log is the journal JournalAfter serves; an entry's cursor is "c"
	// and its index.
	log []string
}

func (f *fakeSystem) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeSystem) Start(_ context.Context, unit string) error {
	f.record("start " + unit)
	return f.startErr[unit]
}

func (f *fakeSystem) Stop(_ context.Context, unit string) error {
	f.record("stop " + unit)
	return nil
}

func (f *fakeSystem) Failed(_ context.Context, unit string) bool { return f.failed[unit] }

func (f *fakeSystem) Journal(_ context.Context, unit string, lines int) string {
	if f.journal == "" {
		return ""
	}
	return fmt.Sprintf("%s (%s, %d lines)", f.journal, unit, lines)
}

func (f *fakeSystem) JournalAfter(_ context.Context, unit, cursor string, lines int) ([]string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	from := 0
	if cursor != "" {
		i, err := strconv.Atoi(strings.TrimPrefix(cursor, "c"))
		if err != nil {
			return nil, cursor, fmt.Errorf("bad cursor %q", cursor)
		}
		from = i + 1
	}
	out := f.log[from:]
	if len(out) > lines {
		out = out[len(out)-lines:]
	}
	if len(out) == 0 {
		return nil, cursor, nil
	}
	return append([]string(nil), out...), "c" + strconv.Itoa(len(f.log)-1), nil
}

func (f *fakeSystem) appendLog(lines ...string) {
	f.mu.Lock()
	f.log = append(f.log, lines...)
	f.mu.Unlock()
}

func (f *fakeSystem) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// fakePower counts power-offs.
type fakePower struct{ n atomic.Int32 }

func (p *fakePower) PowerOff() error {
	p.n.Add(1)
	return nil
}

// syncBuffer is a bytes.Buffer safe for the agent's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// host is the test's end of the host channel, with the agent running
// behind it.
type host struct {
	t      *testing.T
	conn   net.Conn
	events chan event.Event
	got    []event.Event
	sys    *fakeSystem
	power  *fakePower
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Start's result, once done is closed
}

// startAgent runs Start with opts over a net.Pipe. It never lets the agent
// touch real host paths: slim defaults and trim roots point into temp dirs
// unless the test set them.
func startAgent(t *testing.T, opts Options) *host {
	t.Helper()
	if opts.SlimDefaults == nil {
		opts.SlimDefaults = []string{filepath.Join(t.TempDir(), "no-default-slim", "*")}
	}
	if opts.TrimPaths == nil {
		// A missing root: FITRIM is never issued against the host's disk.
		opts.TrimPaths = []string{filepath.Join(t.TempDir(), "no-such-root")}
	}
	h := &host{
		t:      t,
		events: make(chan event.Event, 10000),
		power:  &fakePower{},
		done:   make(chan struct{}),
	}
	if opts.System == nil {
		h.sys = &fakeSystem{}
		opts.System = h.sys
	} else if fs, ok := opts.System.(*fakeSystem); ok {
		h.sys = fs
	}
	if opts.PowerOff == nil {
		opts.PowerOff = h.power.PowerOff
	}
	agentEnd, hostEnd := net.Pipe()
	opts.Conn = agentEnd
	h.conn = hostEnd
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.err = Start(ctx, opts)
		close(h.done)
	}()
	go func() {
		defer close(h.events)
		dec := event.NewDecoder(hostEnd)
		for {
			e, err := dec.Decode()
			if err != nil {
				return
			}
			h.events <- e
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(wait):
			t.Errorf("agent did not return within %s of its context ending", wait)
		}
		hostEnd.Close()
		agentEnd.Close()
	})
	return h
}

// send writes one request line to the agent.
func (h *host) send(req proto.Request) {
	h.t.Helper()
	b, err := proto.EncodeRequest(req)
	if err != nil {
		h.t.Fatal(err)
	}
	h.sendRaw(string(b))
}

func (h *host) sendRaw(line string) {
	h.t.Helper()
	_ = h.conn.SetWriteDeadline(time.Now().Add(wait))
	if _, err := h.conn.Write([]byte(line)); err != nil {
		h.t.Fatalf("write %q to agent: %v", line, err)
	}
}

// next reads events until one of kind (and name, unless empty) arrives.
func (h *host) next(kind event.Kind, name string) event.Event {
	h.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case e, ok := <-h.events:
			if !ok {
				h.t.Fatalf("event stream ended waiting for %s %s; got:\n%s", kind, name, dump(h.got))
			}
			h.got = append(h.got, e)
			if e.Kind == kind && (name == "" || e.Name == name) {
				return e
			}
		case <-timeout:
			h.t.Fatalf("no %s %s within %s; got:\n%s", kind, name, wait, dump(h.got))
		}
	}
}

// untilTerminal reads events up to and including the first done or failed,
// and returns every event read since the start.
func (h *host) untilTerminal() []event.Event {
	h.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case e, ok := <-h.events:
			if !ok {
				h.t.Fatalf("event stream ended before done or failed; got:\n%s", dump(h.got))
			}
			h.got = append(h.got, e)
			if e.Kind.Terminal() {
				return h.got
			}
		case <-timeout:
			h.t.Fatalf("no done or failed within %s; got:\n%s", wait, dump(h.got))
		}
	}
}

// result waits for Start to return.
func (h *host) result() error {
	h.t.Helper()
	select {
	case <-h.done:
		return h.err
	case <-time.After(wait):
		h.t.Fatalf("Start did not return within %s; events:\n%s", wait, dump(h.got))
		return nil
	}
}

func dump(events []event.Event) string {
	var b strings.Builder
	for _, e := range events {
		fmt.Fprintf(&b, "  %s %v\n", e, e.Fields)
	}
	return b.String()
}

// summary renders events as "kind name" lines, with a step's output line
// after a colon; free log lines are left out.
func summary(events []event.Event) []string {
	var out []string
	for _, e := range events {
		switch e.Kind {
		case event.Log:
			continue
		case event.StepOutput:
			out = append(out, fmt.Sprintf("%s %s: %s", e.Kind, e.Name, e.Msg))
		default:
			out = append(out, strings.TrimSpace(string(e.Kind)+" "+e.Name))
		}
	}
	return out
}

func find(events []event.Event, kind event.Kind, name string) (event.Event, bool) {
	for _, e := range events {
		if e.Kind == kind && e.Name == name {
			return e, true
		}
	}
	return event.Event{}, false
}

// newAgent is an agent not started, for calling its parts directly.
func newAgent(opts Options) *Agent {
	return &Agent{
		opts:    opts,
		out:     make(chan event.Event, outBuffer),
		flushed: make(chan struct{}),
		replay:  map[string]event.Event{},
		execs:   map[string]*execRun{},
		room:    make(chan struct{}, 1),
	}
}

// emitted returns what a queued for the host so far.
func emitted(a *Agent) []event.Event {
	var out []event.Event
	for {
		select {
		case e := <-a.out:
			out = append(out, e)
		default:
			return out
		}
	}
}

func TestHelloFirst(t *testing.T) {
	for _, mode := range []proto.Mode{proto.Provision, proto.Run} {
		t.Run(string(mode), func(t *testing.T) {
			h := startAgent(t, Options{Config: proto.Config{Stack: "demo"}, Mode: mode, Version: "v1.2.3"})
			e := h.next(event.Hello, "")
			if len(h.got) != 1 {
				t.Errorf("hello is event %d, want the first: %s", len(h.got), dump(h.got))
			}
			want := map[string]string{"mode": string(mode), "version": "v1.2.3", "resume": "true"}
			if diff := cmp.Diff(want, e.Fields); diff != "" {
				t.Errorf("hello fields (-want +got):\n%s", diff)
			}
			if e.Name != "demo" {
				t.Errorf("hello name = %q, want the stack, demo", e.Name)
			}
		})
	}
}

func TestDefaultModeIsRun(t *testing.T) {
	h := startAgent(t, Options{})
	if e := h.next(event.Hello, ""); e.Fields[proto.FieldMode] != string(proto.Run) {
		t.Errorf("hello mode = %q, want %q", e.Fields[proto.FieldMode], proto.Run)
	}
}

func TestUnknownMode(t *testing.T) {
	h := startAgent(t, Options{Mode: "bogus"})
	f := h.next(event.Failed, "")
	if !strings.Contains(f.Msg, `unknown agent mode "bogus"`) {
		t.Errorf("failed = %q, want it to name the mode", f.Msg)
	}
	if err := h.result(); err == nil {
		t.Error("Start returned nil for an unknown mode")
	}
	if n := h.power.n.Load(); n != 0 {
		t.Errorf("powered off %d times after a run-mode failure, want 0", n)
	}
}

func TestConsoleGetsEveryEvent(t *testing.T) {
	var console syncBuffer
	h := startAgent(t, Options{Config: proto.Config{Stack: "demo"}, Mode: proto.Run, Console: &console})
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
	if err := h.result(); err != nil {
		t.Fatal(err)
	}
	want := "emu-agent: hello demo: agent up\nemu-agent: ready: all services healthy\nemu-agent: done: shutting down\n"
	if diff := cmp.Diff(want, console.String()); diff != "" {
		t.Errorf("console (-want +got):\n%s", diff)
	}
}

func TestEmitDropsOldestWhenFull(t *testing.T) {
	a := newAgent(Options{})
	a.out = make(chan event.Event, 3)
	for i := range 5 {
		a.emit(event.New(event.Log, "", fmt.Sprint(i)))
	}
	var got []string
	for _, e := range emitted(a) {
		got = append(got, e.Msg)
	}
	if diff := cmp.Diff([]string{"2", "3", "4"}, got); diff != "" {
		t.Errorf("queued events (-want +got):\n%s", diff)
	}
	// The status still saw every event.
	if a.status.Last.IsZero() {
		t.Error("status did not fold the events")
	}
}

// TestNoEmitAfterStartReturns: the request reader outlives Start (it is
// blocked reading the port); what it reads then must not crash the agent
// by sending on the closed event queue.
func TestNoEmitAfterStartReturns(t *testing.T) {
	h := startAgent(t, Options{Mode: proto.Run})
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
	if err := h.result(); err != nil {
		t.Fatal(err)
	}
	// Each write returns once the reader took the line; the second one
	// proves the reader came back from handling the first.
	h.sendRaw("not a request\n")
	h.sendRaw("still not a request\n")
}

func TestSubset(t *testing.T) {
	all := []proto.Service{
		{Name: "db"},
		{Name: "cache"},
		{Name: "api", After: []string{"db", "cache"}},
		{Name: "worker", After: []string{"api"}},
	}
	for _, tc := range []struct {
		name  string
		names []string
		want  []proto.Service
	}{
		{"none", nil, nil},
		{"all", []string{"worker", "api", "cache", "db"}, all},
		{"start order kept, outside deps dropped", []string{"api", "db"}, []proto.Service{{Name: "db"}, {Name: "api", After: []string{"db"}}}},
		{"unknown names ignored", []string{"nope", "worker"}, []proto.Service{{Name: "worker"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, subset(all, tc.names)); diff != "" {
				t.Errorf("subset(%v) (-want +got):\n%s", tc.names, diff)
			}
		})
	}
	if len(all[2].After) != 2 {
		t.Errorf("subset changed its input: %v", all[2].After)
	}
}

func TestErrorMessages(t *testing.T) {
	inner := errors.New("boom")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&StepError{Step: "seed", Code: 3, Err: inner}, "exited with code 3"},
		{&StepError{Step: "seed", Code: -1, TimedOut: true, Timeout: 3 * time.Second, Err: inner}, "timed out after 3s and was killed"},
		{&StepError{Step: "seed", Code: -1, Err: inner}, "boom"},
		{&ServiceError{Service: "api", Probe: "refused"}, "service api did not become healthy: refused"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	if !errors.Is(&StepError{Err: inner}, inner) {
		t.Error("StepError does not unwrap to its cause")
	}
	if got := failedName(fmt.Errorf("wrapped: %w", &ServiceError{Service: "api"})); got != "api" {
		t.Errorf("failedName = %q, want api", got)
	}
	if got := failedName(inner); got != "" {
		t.Errorf("failedName(plain error) = %q, want empty", got)
	}
}

// A shutdown says on the console how long each service took to stop.
func TestConsoleSaysStopTimes(t *testing.T) {
	var console syncBuffer
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "db", Unit: "db.service", Health: proto.Health{Exec: []string{"true"}}},
	}}
	h := startAgent(t, Options{Config: cfg, Mode: proto.Run, Console: &console})
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
	if err := h.result(); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`emu-agent: service db stopped in \d`).MatchString(console.String()) {
		t.Errorf("console lacks the stop time:\n%s", console.String())
	}
}
