package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func newClient(t *testing.T, opts ...FakeOption) (*Client, *Fake) {
	t.Helper()
	f, conn := NewFake(opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, conn)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		f.Close()
		<-f.Done()
	})
	return c, f
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	_, f := newClient(t)
	if diff := cmp.Diff([]string{"qmp_capabilities"}, f.Commands()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

func TestHandshakeDeadline(t *testing.T) {
	f, conn := NewFake(FakeSilentHandshake())
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := New(ctx, conn)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("New took %v", d)
	}
}

func TestHandshakeCancel(t *testing.T) {
	f, conn := NewFake(FakeSilentHandshake())
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := New(ctx, conn)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("New = %v, want canceled", err)
	}
}

func TestNotAGreeting(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	go server.Write([]byte(`{"hello":1}` + "\n"))
	_, err := New(testCtx(t), client)
	if err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Fatalf("New = %v", err)
	}
}

func TestStatus(t *testing.T) {
	c, _ := newClient(t, FakeStatus(Status{Status: "prelaunch"}))
	got, err := c.Status(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Status{Running: false, Status: "prelaunch"}); got != want {
		t.Errorf("Status = %+v, want %+v", got, want)
	}
}

func TestPowerDown(t *testing.T) {
	tests := []struct {
		name     string
		opts     []FakeOption
		events   []string
		statusAf string
	}{
		{"ignored", nil, []string{"POWERDOWN"}, "running"},
		{"obeyed", []FakeOption{FakeShutdownOnPowerDown()}, []string{"POWERDOWN", "SHUTDOWN"}, "shutdown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, f := newClient(t, tt.opts...)
			ctx := testCtx(t)
			if err := c.PowerDown(ctx); err != nil {
				t.Fatal(err)
			}
			// Events follow the reply; a later reply proves they were read.
			s, err := c.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if s.Status != tt.statusAf {
				t.Errorf("status after power-down = %q, want %q", s.Status, tt.statusAf)
			}
			if n := f.Count("system_powerdown"); n != 1 {
				t.Errorf("system_powerdown received %d times", n)
			}
			if diff := cmp.Diff(tt.events, eventNames(c.Events())); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

func eventNames(es []Event) []string {
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	return names
}

func TestErrorReply(t *testing.T) {
	c, _ := newClient(t)
	err := c.Execute(testCtx(t), "no-such-command", map[string]any{"x": 1}, nil)
	var qe *Error
	if !errors.As(err, &qe) {
		t.Fatalf("Execute = %v, want *Error", err)
	}
	want := &Error{Command: "no-such-command", Class: "CommandNotFound", Desc: "The command no-such-command has not been found"}
	if diff := cmp.Diff(want, qe); diff != "" {
		t.Errorf("error (-want +got):\n%s", diff)
	}
	if !strings.Contains(err.Error(), "no-such-command") {
		t.Errorf("error %q does not name the command", err)
	}
}

func TestArguments(t *testing.T) {
	var got json.RawMessage
	c, f := newClient(t, FakeHandle("echo", func(args json.RawMessage) (any, *Error) {
		got = args
		return args, nil
	}))
	var res struct{ Device string }
	if err := c.Execute(testCtx(t), "echo", map[string]string{"device": "vda"}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Device != "vda" || string(got) != `{"device":"vda"}` {
		t.Errorf("result %+v, args %s", res, got)
	}
	if err := c.Execute(testCtx(t), "echo", "not an object", nil); err == nil {
		t.Error("string arguments accepted")
	}
	if n := f.Count("echo"); n != 1 {
		t.Errorf("echo received %d times, want 1", n)
	}
}

func TestEventsBeforeReply(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	f, conn := NewFake(FakeEventsBeforeReplies(
		Event{Name: "STOP"},
		Event{Name: "RESUME", Data: json.RawMessage(`{"x":1}`)},
	))
	defer f.Close()
	c, err := New(testCtx(t), conn, WithEventHandler(func(e Event) {
		mu.Lock()
		seen = append(seen, e.Name)
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.Status(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != "running" {
		t.Errorf("status = %q", s.Status)
	}
	evs := c.Events()
	if diff := cmp.Diff([]string{"STOP", "RESUME"}, eventNames(evs)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if string(evs[1].Data) != `{"x":1}` || evs[1].Time.IsZero() {
		t.Errorf("event %+v", evs[1])
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{"STOP", "RESUME"}, seen); diff != "" {
		t.Errorf("handler saw (-want +got):\n%s", diff)
	}
}

func TestLargeReply(t *testing.T) {
	big := strings.Repeat("x", 200<<10)
	c, _ := newClient(t, FakeHandle("query-big", func(json.RawMessage) (any, *Error) {
		return map[string]string{"blob": big}, nil
	}))
	var res struct{ Blob string }
	if err := c.Execute(testCtx(t), "query-big", nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.Blob != big {
		t.Errorf("got %d bytes, want %d", len(res.Blob), len(big))
	}
	// The stream is still in step afterwards.
	if _, err := c.Status(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestNeverAnswers(t *testing.T) {
	c, f := newClient(t, FakeSilent())
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Status(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Status = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Status returned after %v", d)
	}
	if n := f.Count("query-status"); n != 1 {
		t.Errorf("query-status received %d times", n)
	}
}

func TestQuit(t *testing.T) {
	for _, hangUp := range []bool{false, true} {
		name := map[bool]string{false: "reply", true: "hang-up"}[hangUp]
		t.Run(name, func(t *testing.T) {
			var opts []FakeOption
			if hangUp {
				opts = append(opts, FakeQuitHangUp())
			}
			c, f := newClient(t, opts...)
			if err := c.Quit(testCtx(t)); err != nil {
				t.Fatalf("Quit: %v", err)
			}
			<-f.Done()
			select {
			case <-c.Done():
			case <-time.After(2 * time.Second):
				t.Fatal("client did not see the connection end")
			}
			if n := f.Count("quit"); n != 1 {
				t.Errorf("quit received %d times", n)
			}
			if _, err := c.Status(testCtx(t)); err == nil {
				t.Error("Status after quit succeeded")
			}
		})
	}
}

func TestMonitorDies(t *testing.T) {
	c, f := newClient(t, FakeSilent())
	time.AfterFunc(50*time.Millisecond, func() { f.Close() })
	_, err := c.Status(testCtx(t))
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Status = %v, want connection error", err)
	}
}

func TestClose(t *testing.T) {
	c, _ := newClient(t, FakeSilent())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Status(testCtx(t))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("pending Status = %v, want ErrClosed", err)
	}
	if _, err := c.Status(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Status after Close = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConcurrentStatus(t *testing.T) {
	c, f := newClient(t, FakeEventsBeforeReplies(Event{Name: "RTC_CHANGE"}))
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() {
			if _, err := c.Status(ctx); err != nil {
				errs <- err
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			f.SetStatus(Status{Status: "paused"})
			c.Events()
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := f.Count("query-status"); n != 50 {
		t.Errorf("query-status received %d times", n)
	}
}

func TestDebugLog(t *testing.T) {
	var buf syncBuffer
	f, conn := NewFake()
	defer f.Close()
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(testCtx(t), conn, WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Status(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"qmp greeting", "qmp_capabilities", "query-status", `\"status\":\"running\"`} {
		if !strings.Contains(out, want) {
			t.Errorf("debug log lacks %q:\n%s", want, out)
		}
	}
}

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

func TestQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("needs QEMU; skipped with -short")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found")
	}
	// Unix socket paths are limited to ~108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")

	var out syncBuffer
	cmd := exec.Command(bin, "-nodefaults", "-display", "none", "-machine", "none", "-S",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
	})

	ctx := testCtx(t)
	var c *Client
	for {
		c, err = Dial(ctx, sock)
		if err == nil {
			break
		}
		select {
		case err := <-waited:
			waited <- err
			t.Fatalf("qemu exited: %v\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("dial: %v\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer c.Close()

	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Running || (s.Status != "prelaunch" && s.Status != "paused") {
		t.Errorf("Status = %+v, want prelaunch or paused", s)
	}
	var qe *Error
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command = %v", err)
	}
	if err := c.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	select {
	case err := <-waited:
		waited <- err
		if err != nil {
			t.Errorf("qemu exit: %v\n%s", err, out.String())
		}
	case <-ctx.Done():
		t.Fatal("qemu did not exit after quit")
	}
}
