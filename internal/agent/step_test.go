package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

func sh(name, script, dir string) proto.Step {
	return proto.Step{Name: name, Run: []string{"/bin/sh", "-c", script}, Dir: dir}
}

// provision runs one provision request against a fresh agent and returns
// the events up to done or failed.
func provision(t *testing.T, opts Options, req proto.Request) (*host, []event.Event) {
	t.Helper()
	opts.Mode = proto.Provision
	h := startAgent(t, opts)
	h.next(event.Hello, "")
	req.Op = proto.OpProvision
	h.send(req)
	return h, h.untilTerminal()
}

func TestProvision(t *testing.T) {
	dir := t.TempDir()
	// What the request's slim and the defaults remove: never a host path.
	for _, p := range []string{"req/a.txt", "req/sub/b.txt", "def/x.tmp", "def/keep.txt"} {
		writeFile(t, filepath.Join(dir, p), "x")
	}
	sys := &fakeSystem{}
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "db", Unit: "postgresql.service", Health: proto.Health{Exec: []string{"true"}}},
		{Name: "cache", Unit: "valkey.service", Health: proto.Health{Exec: []string{"true"}}},
		{Name: "api", Unit: "emu-api.service", After: []string{"db", "cache"}, Health: proto.Health{Exec: []string{"true"}}, Ports: []string{"http=8080"}},
		{Name: "worker", Unit: "emu-worker.service", After: []string{"api"}, Health: proto.Health{Exec: []string{"true"}}},
	}}
	h, events := provision(t, Options{
		Config:       cfg,
		System:       sys,
		SlimDefaults: []string{filepath.Join(dir, "def", "*.tmp")},
	}, proto.Request{
		// api depends on cache, which the bake does not start: the
		// dependency is dropped instead of waited on forever.
		Services: []string{"api", "db"},
		Steps: []proto.Step{
			sh("greet", "echo one; echo two >&2; printf three", dir),
			sh("quiet", "exit 0", dir),
		},
		Slim: []string{filepath.Join(dir, "req", "*")},
	})
	if err := h.result(); err != nil {
		t.Fatalf("Start: %v\n%s", err, dump(events))
	}

	want := []string{
		"hello demo",
		"stage.start services",
		"service.starting db",
		"service.healthy db",
		"service.starting api",
		"service.healthy api",
		"stage.done services",
		"stage.start bake",
		"step.start greet",
		"step.output greet: one",
		"step.output greet: two",
		"step.output greet: three",
		"step.done greet",
		"step.start quiet",
		"step.done quiet",
		"stage.done bake",
		"stage.start slim",
		"stage.done slim",
		"done",
	}
	if diff := cmp.Diff(want, summary(events)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}

	for _, name := range []string{"greet", "quiet"} {
		if e, _ := find(events, event.StepDone, name); e.Code == nil || *e.Code != 0 {
			t.Errorf("step.done %s code = %v, want 0", name, e.Code)
		}
	}
	if e, _ := find(events, event.ServiceHealthy, "api"); e.Fields[proto.FieldPorts] != "http=8080" {
		t.Errorf("service.healthy api fields = %v, want the ports", e.Fields)
	}
	slimDone, _ := find(events, event.StageDone, "slim")
	if diff := cmp.Diff(map[string]string{"removed": "3", "trimmed": "0"}, slimDone.Fields); diff != "" {
		t.Errorf("slim fields (-want +got):\n%s", diff)
	}
	assertGone(t, filepath.Join(dir, "req", "a.txt"), filepath.Join(dir, "req", "sub"), filepath.Join(dir, "def", "x.tmp"))
	assertExists(t, filepath.Join(dir, "req"), filepath.Join(dir, "def", "keep.txt"))

	// Only the requested services start, in dependency order; before the
	// slim every service is stopped, last first.
	wantCalls := []string{
		"start postgresql.service", "start emu-api.service",
		"stop emu-worker.service", "stop emu-api.service", "stop valkey.service", "stop postgresql.service",
	}
	if diff := cmp.Diff(wantCalls, sys.Calls()); diff != "" {
		t.Errorf("init system calls (-want +got):\n%s", diff)
	}
	if n := h.power.n.Load(); n != 1 {
		t.Errorf("powered off %d times, want 1", n)
	}
}

func TestProvisionIgnoresOtherRequestsFirst(t *testing.T) {
	h := startAgent(t, Options{Mode: proto.Provision})
	h.next(event.Hello, "")
	h.send(proto.Request{Op: proto.OpStatus})
	h.sendRaw("{not json\n")
	h.send(proto.Request{Op: proto.OpProvision, Steps: []proto.Step{sh("s", "true", t.TempDir())}})
	events := h.untilTerminal()
	if err := h.result(); err != nil {
		t.Fatalf("Start: %v\n%s", err, dump(events))
	}
	var logs []string
	for _, e := range events {
		if e.Kind == event.Log && e.Name == "" {
			logs = append(logs, e.Msg)
		}
	}
	if len(logs) != 2 || !strings.Contains(logs[0]+logs[1], "ignoring status request") || !strings.Contains(logs[0]+logs[1], "decode request") {
		t.Errorf("log events = %q, want one for the ignored status and one for the bad line", logs)
	}
	if _, ok := find(events, event.StepDone, "s"); !ok {
		t.Errorf("step s did not run:\n%s", dump(events))
	}
}

func TestProvisionStepFails(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "second-ran")
	h, events := provision(t, Options{}, proto.Request{Steps: []proto.Step{
		sh("first", "echo before; exit 3", dir),
		sh("second", "touch "+marker, dir),
	}})
	want := []string{
		"hello",
		"stage.start bake",
		"step.start first",
		"step.output first: before",
		"step.failed first",
		"stage.failed bake",
		"failed first",
	}
	if diff := cmp.Diff(want, summary(events)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if e, _ := find(events, event.StepFailed, "first"); e.Code == nil || *e.Code != 3 {
		t.Errorf("step.failed code = %v, want 3", e.Code)
	}
	if f, _ := find(events, event.Failed, "first"); f.Msg != "exited with code 3" {
		t.Errorf("failed msg = %q", f.Msg)
	}
	err := h.result()
	var se *StepError
	if !errors.As(err, &se) || se.Code != 3 || se.Step != "first" {
		t.Errorf("Start error = %v, want a StepError for first with code 3", err)
	}
	assertGone(t, marker)
	if n := h.power.n.Load(); n != 1 {
		t.Errorf("powered off %d times after a failed bake, want 1 (provision always ends the guest)", n)
	}
}

func TestProvisionStepTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	st := sh("hang", "sleep 30 & echo $!; wait", dir)
	st.Timeout = 300 * time.Millisecond
	begin := time.Now()
	h, events := provision(t, Options{}, proto.Request{Steps: []proto.Step{st}})
	if took := time.Since(begin); took > wait {
		t.Errorf("a step with a 300ms timeout took %s to fail", took)
	}
	failed, ok := find(events, event.StepFailed, "hang")
	if !ok {
		t.Fatalf("no step.failed:\n%s", dump(events))
	}
	if failed.Code == nil || *failed.Code != -1 || !strings.Contains(failed.Msg, "timed out") {
		t.Errorf("step.failed = %s, want code -1 and a timeout", failed)
	}
	if f, _ := find(events, event.Failed, "hang"); f.Kind != event.Failed {
		t.Errorf("no failed event naming the step:\n%s", dump(events))
	}
	var se *StepError
	if err := h.result(); !errors.As(err, &se) || !se.TimedOut {
		t.Errorf("Start error = %v, want a timed-out StepError", err)
	}

	out, _ := find(events, event.StepOutput, "hang")
	pid, err := strconv.Atoi(out.Msg)
	if err != nil {
		t.Fatalf("step output %q is not the child's pid", out.Msg)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the step's child %d outlived it", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid is a process that is neither gone nor a zombie
// (a killed orphan waits for init to reap it).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

func TestStepEnvironment(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("EMU_TEST_LEAK", "from the test process")
	st := sh("env", `echo "foo=$FOO"; echo "empty=${EMPTY-unset}"; echo "path=$PATH"; echo "lang=$LANG"; echo "frontend=$DEBIAN_FRONTEND"; echo "home=$HOME"; echo "leak=${EMU_TEST_LEAK-unset}"; echo "pwd=$(pwd -P)"`, dir)
	st.Env = map[string]string{"FOO": "bar baz $NOT_EXPANDED", "EMPTY": ""}
	h, events := provision(t, Options{}, proto.Request{Steps: []proto.Step{st}})
	if err := h.result(); err != nil {
		t.Fatalf("Start: %v\n%s", err, dump(events))
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range events {
		if e.Kind == event.StepOutput {
			got = append(got, e.Msg)
		}
	}
	want := []string{
		"foo=bar baz $NOT_EXPANDED",
		"empty=",
		"path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"lang=C.UTF-8",
		"frontend=noninteractive",
		"home=/root",
		"leak=unset",
		"pwd=" + realDir,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("step output (-want +got):\n%s", diff)
	}
}

func TestStepErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		step proto.Step
		want string
	}{
		{"empty command", proto.Step{Name: "e", Dir: dir}, "empty command"},
		{"missing binary", proto.Step{Name: "m", Run: []string{filepath.Join(dir, "nope")}, Dir: dir}, "start " + filepath.Join(dir, "nope")},
		{"unknown user", proto.Step{Name: "u", Run: []string{"true"}, User: "emu-no-such-user", Dir: dir}, "look up user emu-no-such-user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, events := provision(t, Options{}, proto.Request{Steps: []proto.Step{tc.step}})
			failed, ok := find(events, event.StepFailed, tc.step.Name)
			if !ok {
				t.Fatalf("no step.failed:\n%s", dump(events))
			}
			if failed.Code == nil || *failed.Code != -1 || !strings.HasPrefix(failed.Msg, tc.want) {
				t.Errorf("step.failed = %s, want code -1 and a message starting %q", failed, tc.want)
			}
			if h.result() == nil {
				t.Error("Start returned nil")
			}
		})
	}
}

func TestStepLongOutputLineCapped(t *testing.T) {
	dir := t.TempDir()
	h, events := provision(t, Options{}, proto.Request{Steps: []proto.Step{
		sh("long", "head -c 10000 /dev/zero | tr '\\0' x; echo; echo after", dir),
	}})
	if err := h.result(); err != nil {
		t.Fatalf("Start: %v\n%s", err, dump(events))
	}
	var got []string
	for _, e := range events {
		if e.Kind == event.StepOutput {
			got = append(got, e.Msg)
		}
	}
	want := []string{strings.Repeat("x", maxOutputLine) + "…", "after"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("step output (-want +got):\n%s", diff)
	}
}

func TestProvisionCanceledWhileWaiting(t *testing.T) {
	h := startAgent(t, Options{Mode: proto.Provision})
	h.next(event.Hello, "")
	h.cancel()
	f := h.next(event.Failed, "")
	if !strings.Contains(f.Msg, "wait for provision request") {
		t.Errorf("failed = %q, want it to say what was waited for", f.Msg)
	}
	if err := h.result(); err == nil {
		t.Error("Start returned nil after its context ended")
	}
}

func TestStartServicesWithoutInitSystem(t *testing.T) {
	svcs := []proto.Service{{Name: "db", Unit: "db.service"}}
	a := newAgent(Options{Config: proto.Config{Services: svcs}})
	err := a.startServices(t.Context(), svcs)
	if err == nil || !strings.Contains(err.Error(), "no init system") {
		t.Errorf("startServices with no System = %v, want a no-init-system error", err)
	}
	if err := a.startServices(t.Context(), nil); err != nil {
		t.Errorf("startServices(none) = %v, want nil", err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func assertGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (err %v)", p, err)
		}
	}
}

func assertExists(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v, want it kept", p, err)
		}
	}
}

// With AckSteps a step runs only once the host has acknowledged its start:
// the step's marker file must not exist while the ack is held back, and a
// stale ack for another step does not release it.
func TestProvisionStepWaitsForAck(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	h := startAgent(t, Options{Mode: proto.Provision})
	h.next(event.Hello, "")
	h.send(proto.Request{Op: proto.OpProvision, AckSteps: true, Steps: []proto.Step{
		sh("first", "touch "+marker, dir),
		sh("second", "exit 0", dir),
	}})
	h.next(event.StepStart, "first")
	h.send(proto.Request{Op: proto.OpAck, ID: "not-this-one"})
	// Whatever the agent would do without the ack, it has had time to do.
	h.send(proto.Request{Op: proto.OpStatus})
	h.next(event.Log, "")
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the step ran before the host acknowledged its start")
	}
	h.send(proto.Request{Op: proto.OpAck, ID: "first"})
	done := h.next(event.StepDone, "first")
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the step did not run after the ack: %v", err)
	}
	if d, err := time.ParseDuration(done.Fields[proto.FieldAck]); err != nil || d <= 0 {
		t.Errorf("step.done field %s = %q, want the time the ack took", proto.FieldAck, done.Fields[proto.FieldAck])
	}
	h.next(event.StepStart, "second")
	h.send(proto.Request{Op: proto.OpAck, ID: "second"})
	if f, ok := find(h.untilTerminal(), event.Done, ""); !ok {
		t.Errorf("no done after both steps; got:\n%s (%v)", dump(h.got), f)
	}
	if err := h.result(); err != nil {
		t.Errorf("Start: %v", err)
	}
}

// Without AckSteps (hosts that do not ask for it) steps run at once.
func TestProvisionWithoutAckRunsAtOnce(t *testing.T) {
	dir := t.TempDir()
	_, events := provision(t, Options{}, proto.Request{Steps: []proto.Step{sh("only", "exit 0", dir)}})
	done, ok := find(events, event.StepDone, "only")
	if !ok {
		t.Fatalf("no step.done; got:\n%s", dump(events))
	}
	if v, ok := done.Fields[proto.FieldAck]; ok {
		t.Errorf("step.done carries %s=%q without AckSteps", proto.FieldAck, v)
	}
}
