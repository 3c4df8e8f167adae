package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// listen returns a TCP port on 127.0.0.1 that accepts connections.
func listen(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// closedPort returns a port on 127.0.0.1 nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// httpPort serves /ok with 200 and /down with 503, and returns the port.
func httpPort(t *testing.T) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(http.StatusOK)
		case "/down":
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func TestProbe(t *testing.T) {
	open, closed, web := listen(t), closedPort(t), httpPort(t)
	for _, tc := range []struct {
		name    string
		h       proto.Health
		wantErr string // "" for success, else a substring
	}{
		{"tcp open", proto.Health{TCP: open}, ""},
		{"tcp closed", proto.Health{TCP: closed}, "connection refused"},
		{"http 200", proto.Health{HTTPPort: web, HTTPPath: "/ok"}, ""},
		{"http 200 explicit", proto.Health{HTTPPort: web, HTTPPath: "/ok", HTTPStatus: 200}, ""},
		{"http 503", proto.Health{HTTPPort: web, HTTPPath: "/down"}, "status 503, want 200"},
		{"http 503 wanted", proto.Health{HTTPPort: web, HTTPPath: "/down", HTTPStatus: 503}, ""},
		{"http wrong status", proto.Health{HTTPPort: web, HTTPPath: "/ok", HTTPStatus: 204}, "/ok: status 200, want 204"},
		{"http not found", proto.Health{HTTPPort: web, HTTPPath: "/missing"}, "status 404, want 200"},
		{"http refused", proto.Health{HTTPPort: closed, HTTPPath: "/"}, "connection refused"},
		{"exec true", proto.Health{Exec: []string{"true"}}, ""},
		{"exec false", proto.Health{Exec: []string{"false"}}, "false: exit status 1"},
		{"exec output in error", proto.Health{Exec: []string{"/bin/sh", "-c", "echo not ready yet; exit 2"}}, "exit status 2: not ready yet"},
		{"exec missing", proto.Health{Exec: []string{"/nonexistent/probe"}}, "/nonexistent/probe"},
		{"none", proto.Health{}, "no health check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := probe(context.Background(), tc.h)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("probe = %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("probe = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestProbeExecOutputTrimmed(t *testing.T) {
	err := probe(context.Background(), proto.Health{Exec: []string{"/bin/sh", "-c", "head -c 1000 /dev/zero | tr '\\0' y; echo END; exit 1"}})
	if err == nil {
		t.Fatal("probe succeeded")
	}
	if !strings.HasSuffix(err.Error(), "yEND") || len(err.Error()) > 400 {
		t.Errorf("probe error = %q (%d bytes), want the output's last 200 bytes", err, len(err.Error()))
	}
}

func TestProbeBoundedByItsOwnTimeout(t *testing.T) {
	defer func(d time.Duration) { execProbeTimeout = d }(execProbeTimeout)
	execProbeTimeout = 500 * time.Millisecond
	begin := time.Now()
	err := probe(context.Background(), proto.Health{Exec: []string{"sleep", "30"}})
	if err == nil {
		t.Fatal("probe of sleep 30 succeeded")
	}
	if took := time.Since(begin); took > wait {
		t.Errorf("one probe took %s; it should give up after about 0.5s", took)
	}
	if got := probeTimeout(proto.Health{TCP: 80}); got != 2*time.Second {
		t.Errorf("a TCP probe's bound = %s, want 2s", got)
	}
}

func TestServiceUnitFailed(t *testing.T) {
	sys := &fakeSystem{failed: map[string]bool{"bad.service": true}, journal: "bad: segmentation fault"}
	cfg := proto.Config{Services: []proto.Service{
		// A long timeout: the unit's failure, not the timeout, must end the wait.
		{Name: "bad", Unit: "bad.service", Health: proto.Health{Exec: []string{"false"}, Timeout: time.Hour}},
	}}
	begin := time.Now()
	h, events := provision(t, Options{Config: cfg, System: sys}, proto.Request{Services: []string{"bad"}})
	if took := time.Since(begin); took > wait {
		t.Errorf("a failed unit took %s to report", took)
	}
	want := []string{
		"hello",
		"stage.start services",
		"service.starting bad",
		"service.unhealthy bad",
		"stage.failed services",
		"failed bad",
	}
	if diff := cmp.Diff(want, summary(events)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	un, _ := find(events, event.ServiceUnhealthy, "bad")
	if !strings.HasPrefix(un.Msg, "unit bad.service failed; last probe: false: exit status 1") {
		t.Errorf("service.unhealthy msg = %q", un.Msg)
	}
	if got, want := un.Fields[proto.FieldJournal], "bad: segmentation fault (bad.service, 20 lines)"; got != want {
		t.Errorf("journal field = %q, want %q", got, want)
	}
	err := h.result()
	var se *ServiceError
	if !errors.As(err, &se) || se.Service != "bad" || se.Journal == "" {
		t.Errorf("Start error = %#v, want a ServiceError for bad with its journal", err)
	}
}

func TestServiceStartError(t *testing.T) {
	sys := &fakeSystem{startErr: map[string]error{"db.service": errors.New("unit db.service not found")}}
	cfg := proto.Config{Services: []proto.Service{{Name: "db", Unit: "db.service", Health: proto.Health{Exec: []string{"true"}}}}}
	h, events := provision(t, Options{Config: cfg, System: sys}, proto.Request{Services: []string{"db"}})
	un, ok := find(events, event.ServiceUnhealthy, "db")
	if !ok || un.Msg != "unit db.service not found" {
		t.Errorf("service.unhealthy = %s, want the start error:\n%s", un, dump(events))
	}
	if _, ok := un.Fields[proto.FieldJournal]; ok {
		t.Errorf("journal field set from an empty journal: %v", un.Fields)
	}
	if _, ok := find(events, event.Failed, "db"); !ok {
		t.Errorf("no failed event naming db:\n%s", dump(events))
	}
	if h.result() == nil {
		t.Error("Start returned nil")
	}
}

func TestServiceNeverHealthy(t *testing.T) {
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "db", Unit: "db.service", Health: proto.Health{Exec: []string{"true"}}},
		{Name: "slow", Unit: "slow.service", After: []string{"db"}, Health: proto.Health{TCP: closedPort(t), Timeout: 500 * time.Millisecond}},
		{Name: "never", Unit: "never.service", After: []string{"slow"}, Health: proto.Health{Exec: []string{"true"}}},
	}}
	h := startAgent(t, Options{Config: cfg, Mode: proto.Run})
	un := h.next(event.ServiceUnhealthy, "slow")
	if !strings.HasPrefix(un.Msg, "no success within 500ms; last probe: ") || !strings.Contains(un.Msg, "connection refused") {
		t.Errorf("service.unhealthy msg = %q", un.Msg)
	}
	f := h.next(event.Failed, "slow")
	if !strings.Contains(f.Msg, "service slow did not become healthy") {
		t.Errorf("failed msg = %q", f.Msg)
	}
	// The agent stays up for the host to ask for a shutdown.
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
	if err := h.result(); err != nil {
		t.Errorf("Start after shutdown = %v, want nil", err)
	}
	for _, e := range h.got {
		if e.Name == "never" || e.Kind == event.Ready {
			t.Errorf("unexpected %s after a dependency failed", e)
		}
	}
}

// A journal read through the agent: the last lines first, then what came
// after the cursor the answer ended with; every event names the request.
func TestJournalAfterCursor(t *testing.T) {
	sys := &fakeSystem{log: []string{"one", "two", "three"}}
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{{Name: "api", Unit: "emu-api.service", Health: proto.Health{Exec: []string{"true"}}}}}
	h := startAgent(t, Options{Config: cfg, Mode: proto.Run, System: sys})
	h.next(event.Ready, "")
	ask := func(req proto.Request) (lines []string, end event.Event) {
		t.Helper()
		h.send(req)
		for {
			e := h.next(event.Log, req.Service)
			if e.Fields[proto.FieldReq] != req.ID {
				t.Errorf("event %s has req %q, want %q", e, e.Fields[proto.FieldReq], req.ID)
			}
			if e.Fields[proto.FieldEnd] == "true" {
				return lines, e
			}
			lines = append(lines, e.Msg)
		}
	}
	lines, end := ask(proto.Request{Op: proto.OpLogs, Service: "api", Lines: 2, ID: "r1"})
	if diff := cmp.Diff([]string{"two", "three"}, lines); diff != "" || end.Fields[proto.FieldCursor] != "c2" {
		t.Errorf("last 2 lines (-want +got):\n%s; cursor %q, want c2", diff, end.Fields[proto.FieldCursor])
	}
	sys.appendLog("four", "five")
	lines, end = ask(proto.Request{Op: proto.OpLogs, Service: "api", Cursor: "c2", ID: "r2"})
	if diff := cmp.Diff([]string{"four", "five"}, lines); diff != "" || end.Fields[proto.FieldCursor] != "c4" {
		t.Errorf("after c2 (-want +got):\n%s; cursor %q, want c4", diff, end.Fields[proto.FieldCursor])
	}
	// Nothing new: no lines, and the cursor stays.
	lines, end = ask(proto.Request{Op: proto.OpLogs, Service: "api", Cursor: "c4", ID: "r3"})
	if len(lines) != 0 || end.Fields[proto.FieldCursor] != "c4" || end.Fields[proto.FieldError] != "" {
		t.Errorf("after c4: lines %q, end %v; want none, cursor c4", lines, end.Fields)
	}
	_, end = ask(proto.Request{Op: proto.OpLogs, Service: "api", Cursor: "bogus", ID: "r4"})
	if !strings.Contains(end.Fields[proto.FieldError], "bad cursor") {
		t.Errorf("bad cursor: end %v, want the journal's error", end.Fields)
	}
	_, end = ask(proto.Request{Op: proto.OpLogs, Service: "nope", ID: "r5"})
	if end.Fields[proto.FieldError] != `no service "nope"` {
		t.Errorf("unknown service: end %v", end.Fields)
	}
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
}

func TestSplitCursor(t *testing.T) {
	for _, tc := range []struct {
		out, prev string
		lines     []string
		next      string
	}{
		{"", "c1", nil, "c1"},
		{"[ 1.0] a\n[ 2.0] b\n-- cursor: s=abc;i=2\n", "", []string{"[ 1.0] a", "[ 2.0] b"}, "s=abc;i=2"},
		{"-- cursor: s=abc;i=2\n", "s=abc;i=1", []string{}, "s=abc;i=2"},
		{"[ 1.0] a\n", "c0", []string{"[ 1.0] a"}, "c0"},
	} {
		lines, next := splitCursor(tc.out, tc.prev)
		if diff := cmp.Diff(tc.lines, lines, cmpopts.EquateEmpty()); diff != "" || next != tc.next {
			t.Errorf("splitCursor(%q, %q) = %q, %q; want %q, %q", tc.out, tc.prev, lines, next, tc.lines, tc.next)
		}
	}
}

func TestRunMode(t *testing.T) {
	sys := &fakeSystem{}
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "db", Unit: "postgresql.service", Health: proto.Health{TCP: listen(t)}},
		{Name: "api", Unit: "emu-api.service", After: []string{"db"}, Health: proto.Health{HTTPPort: httpPort(t), HTTPPath: "/ok"}, Ports: []string{"http=8080"}},
		{Name: "worker", Unit: "emu-worker.service", After: []string{"api"}, Health: proto.Health{Exec: []string{"true"}}},
	}}
	h := startAgent(t, Options{Config: cfg, Mode: proto.Run, System: sys})
	h.next(event.Ready, "")
	want := []string{
		"hello demo",
		"service.starting db", "service.healthy db",
		"service.starting api", "service.healthy api",
		"service.starting worker", "service.healthy worker",
		"ready",
	}
	if diff := cmp.Diff(want, summary(h.got)); diff != "" {
		t.Errorf("events up to ready (-want +got):\n%s", diff)
	}
	hello := h.got[0]

	// Requests a run-mode agent does not serve are logged, not fatal.
	h.send(proto.Request{Op: proto.OpProvision})
	if l := h.next(event.Log, ""); !strings.Contains(l.Msg, "ignoring provision request in run mode") {
		t.Errorf("log = %q", l.Msg)
	}

	h.got = nil
	h.send(proto.Request{Op: proto.OpStatus})
	h.next(event.Ready, "")
	want = []string{"hello demo", "service.healthy db", "service.healthy api", "service.healthy worker", "ready"}
	if diff := cmp.Diff(want, summary(h.got)); diff != "" {
		t.Errorf("status replay (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(hello, h.got[0]); diff != "" {
		t.Errorf("replayed hello differs from the first (-first +replayed):\n%s", diff)
	}
	if got := h.got[2].Fields[proto.FieldPorts]; got != "http=8080" {
		t.Errorf("replayed api fields = %v, want its ports", h.got[2].Fields)
	}

	h.send(proto.Request{Op: proto.OpShutdown})
	if d := h.next(event.Done, ""); d.Msg != "shutting down" {
		t.Errorf("done msg = %q", d.Msg)
	}
	if err := h.result(); err != nil {
		t.Errorf("Start after shutdown = %v, want nil", err)
	}
	wantCalls := []string{
		"start postgresql.service", "start emu-api.service", "start emu-worker.service",
		"stop emu-worker.service", "stop emu-api.service", "stop postgresql.service",
	}
	if diff := cmp.Diff(wantCalls, sys.Calls()); diff != "" {
		t.Errorf("init system calls (-want +got):\n%s", diff)
	}
	if n := h.power.n.Load(); n != 1 {
		t.Errorf("powered off %d times, want 1", n)
	}
}

func TestRunModeIndependentServicesStartTogether(t *testing.T) {
	// a and b are independent and a is slow: b must not wait for it.
	slowPort := closedPort(t)
	cfg := proto.Config{Services: []proto.Service{
		{Name: "a", Unit: "a.service", Health: proto.Health{TCP: slowPort, Timeout: time.Hour}},
		{Name: "b", Unit: "b.service", Health: proto.Health{Exec: []string{"true"}}},
	}}
	h := startAgent(t, Options{Config: cfg, Mode: proto.Run})
	h.next(event.ServiceHealthy, "b")
	if _, ok := find(h.got, event.ServiceHealthy, "a"); ok {
		t.Fatal("a became healthy with nothing listening")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(slowPort)))
	if err != nil {
		t.Skipf("port %d taken again: %v", slowPort, err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	h.next(event.ServiceHealthy, "a")
	h.next(event.Ready, "")
}

func TestRunModeNoServices(t *testing.T) {
	h := startAgent(t, Options{Config: proto.Config{Stack: "empty"}, Mode: proto.Run})
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpStatus})
	h.next(event.Hello, "")
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
	if err := h.result(); err != nil {
		t.Errorf("Start = %v", err)
	}
	if calls := h.sys.Calls(); len(calls) != 0 {
		t.Errorf("init system calls = %v, want none", calls)
	}
}

func TestRunModeCanceled(t *testing.T) {
	h := startAgent(t, Options{Mode: proto.Run})
	h.next(event.Ready, "")
	h.cancel()
	if err := h.result(); !errors.Is(err, context.Canceled) {
		t.Errorf("Start = %v, want context.Canceled", err)
	}
	if n := h.power.n.Load(); n != 0 {
		t.Errorf("powered off %d times after the context ended, want 0", n)
	}
}

// The overall health timeout can cut a probe short; the message still
// names what the probes before it found.
func TestServiceNeverHealthyKeepsTheLastAnswer(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > 1 {
			select { // later probes hang until the deadline cuts them
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "api", Unit: "api.service", Health: proto.Health{HTTPPort: port, HTTPPath: "/health", Timeout: 700 * time.Millisecond}},
	}}
	h := startAgent(t, Options{Config: cfg, Mode: proto.Run, System: &fakeSystem{}})
	un := h.next(event.ServiceUnhealthy, "api")
	if !strings.Contains(un.Msg, "status 503") {
		t.Errorf("service.unhealthy msg = %q, want the 503 of the probe before the cut", un.Msg)
	}
	h.send(proto.Request{Op: proto.OpShutdown})
	h.next(event.Done, "")
}
