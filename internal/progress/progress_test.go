package progress

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

var t0 = time.Date(2026, 11, 25, 12, 1, 2, 0, time.UTC)

func at(d time.Duration, kind event.Kind, name, msg string) event.Event {
	return event.Event{Time: t0.Add(d), Kind: kind, Name: name, Msg: msg}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// buildEvents is a build that fails in its second bake step.
func buildEvents() []event.Event {
	return []event.Event{
		at(0, event.StageStart, "rootfs", ""),
		at(ms(12300), event.StageDone, "rootfs", "").With(proto.FieldCached, "true"),
		at(ms(12300), event.StageStart, "disk", ""),
		at(ms(15000), event.StageDone, "disk", "").With(proto.FieldSize, "348200000"),
		at(ms(15000), event.StageStart, "provision", ""),
		at(ms(16000), event.Hello, "", "").With(proto.FieldVersion, "0.1.0"),
		at(ms(17000), event.StepStart, "migrate", ""),
		at(ms(17500), event.StepOutput, "migrate", "applying 001_init.sql"),
		at(ms(18000), event.StepOutput, "migrate", "applying 002_users.sql\r\n"),
		at(ms(19100), event.StepDone, "migrate", "").WithCode(0),
		at(ms(19100), event.StepStart, "seed", ""),
		at(ms(20000), event.StepOutput, "seed", "loading \x1b[1mfixtures\x1b[0m"),
		at(ms(20500), event.StepOutput, "seed", "error: duplicate key"),
		at(ms(21200), event.StepFailed, "seed", "").WithCode(3),
		at(ms(21300), event.Log, "", "serial console kept in /state/demo/serial.log"),
		at(ms(21300), event.StageFailed, "provision", "bake step seed exited 3"),
		at(ms(21300), event.Failed, "seed", "bake step seed exited 3"),
	}
}

// upEvents is a start where one service is slow to become healthy.
func upEvents() []event.Event {
	return []event.Event{
		at(0, event.StageStart, "boot", ""),
		at(ms(1500), event.Hello, "", "").With(proto.FieldVersion, "0.1.0"),
		at(ms(1500), event.StageDone, "boot", ""),
		at(ms(1600), event.ServiceStarting, "postgres", ""),
		at(ms(1600), event.ServiceStarting, "api", ""),
		at(ms(2400), event.ServiceHealthy, "postgres", "127.0.0.1:5432"),
		at(ms(3000), event.ServiceUnhealthy, "api", "GET /health: 503"),
		at(ms(4200), event.ServiceHealthy, "api", "127.0.0.1:26701"),
		at(ms(4200), event.Ready, "", ""),
		at(ms(4300), event.Done, "", ""),
	}
}

func golden(t *testing.T, name string, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

func runAll(mode Mode, events []event.Event, opts ...Option) string {
	var buf bytes.Buffer
	r := New(&buf, mode, opts...)
	for _, e := range events {
		r.Emit(e)
	}
	r.Close()
	return buf.String()
}

func TestGolden(t *testing.T) {
	seqs := map[string][]event.Event{"build": buildEvents(), "up": upEvents()}
	for name, events := range seqs {
		t.Run(name, func(t *testing.T) {
			golden(t, "plain_"+name, runAll(Plain, events))
			golden(t, "plain_quiet_"+name, runAll(Plain, events, Verbose(false)))
			golden(t, "json_"+name, runAll(JSON, events))
			golden(t, "summary_"+name, Summary(event.FoldAll(events)))
		})
	}
}

func TestPlainOneLinePerEvent(t *testing.T) {
	events := buildEvents()
	out := runAll(Plain, events)
	if got, want := strings.Count(out, "\n"), len(events); got != want {
		t.Errorf("plain printed %d lines for %d events:\n%s", got, want, out)
	}
	for _, want := range []string{
		"12:01:02 stage rootfs: started\n",
		"12:01:14 stage rootfs: done in 12.3s (cached)\n",
		"12:01:17 stage disk: done in 2.7s (348.2 MB)\n",
		"12:01:22 step seed | loading fixtures\n",
		"12:01:23 step seed: failed (exit 3) after 2.1s\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plain output lacks %q:\n%s", want, out)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	events := buildEvents()
	out := runAll(JSON, events)
	dec := event.NewDecoder(strings.NewReader(out))
	var got []event.Event
	for {
		e, err := dec.Decode()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if diff := cmp.Diff(events, got); diff != "" {
		t.Errorf("decoded events differ (-want +got):\n%s", diff)
	}
}

// screen replays what a terminal would show for out, understanding only the
// sequences Live writes: cursor up, clear line and newline.
func screen(t *testing.T, out string) string {
	t.Helper()
	var lines []string
	row := 0
	for len(out) > 0 {
		switch {
		case strings.HasPrefix(out, cursorUp):
			row--
			if row < 0 {
				t.Fatal("cursor moved above the first line")
			}
			out = out[len(cursorUp):]
		case strings.HasPrefix(out, clearLine):
			if row < len(lines) {
				lines[row] = ""
			}
			out = out[len(clearLine):]
		case out[0] == '\n':
			row++
			out = out[1:]
		default:
			i := strings.IndexAny(out, "\n\x1b")
			if i == 0 {
				t.Fatalf("unexpected escape sequence at %q", out)
			}
			if i < 0 {
				i = len(out)
			}
			for len(lines) <= row {
				lines = append(lines, "")
			}
			lines[row] += out[:i]
			out = out[i:]
		}
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return strings.Join(lines, "\n") + "\n"
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func TestLive(t *testing.T) {
	clock := &fakeClock{now: t0}
	var buf bytes.Buffer
	r := New(&buf, Live, WithClock(clock.Now), WithTick(0), WithWidth(func() int { return 0 }),
		WithStages("rootfs", "disk", "provision", "slim", "compress"))
	events := buildEvents()
	// Up to and including the seed step's first output line.
	for _, e := range events[:12] {
		clock.Set(e.Time)
		r.Emit(e)
	}
	clock.Set(t0.Add(ms(20400)))
	r.render()
	want := strings.Join([]string{
		"  ✓ rootfs      12.3s  (cached)",
		"  ✓ disk         2.7s  (348.2 MB)",
		"  ⠼ provision    5.4s",
		"      ✓ migrate    2.1s",
		"      ⠼ seed       1.3s",
		"          │ loading fixtures",
		"  · slim",
		"  · compress",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, screen(t, buf.String())); diff != "" {
		t.Errorf("running frame (-want +got):\n%s", diff)
	}

	for _, e := range events[12:] {
		clock.Set(e.Time)
		r.Emit(e)
	}
	clock.Set(t0.Add(ms(30000)))
	r.Close()
	r.Close()
	want = strings.Join([]string{
		"✗ step seed: failed (exit 3) after 2.1s",
		"  │ loading fixtures",
		"  │ error: duplicate key",
		"serial console kept in /state/demo/serial.log",
		"✗ stage provision: failed after 6.3s: bake step seed exited 3",
		"✗ failed after 21.3s in seed: bake step seed exited 3",
		"  ✓ rootfs      12.3s  (cached)",
		"  ✓ disk         2.7s  (348.2 MB)",
		"  ✗ provision    6.3s  bake step seed exited 3",
		"      ✓ migrate    2.1s",
		"      ✗ seed       2.1s  (exit 3)",
		"  · slim",
		"  · compress",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, screen(t, buf.String())); diff != "" {
		t.Errorf("final screen (-want +got):\n%s", diff)
	}
}

func TestLiveServices(t *testing.T) {
	clock := &fakeClock{now: t0}
	var buf bytes.Buffer
	r := New(&buf, Live, WithClock(clock.Now), WithTick(0), WithWidth(func() int { return 60 }))
	for _, e := range upEvents()[:7] {
		clock.Set(e.Time)
		r.Emit(e)
	}
	r.Close()
	want := strings.Join([]string{
		"✗ service api: unhealthy: GET /health: 503",
		"  ✓ boot    1.5s",
		"  services",
		"    ✓ postgres healthy   127.0.0.1:5432",
		"    ✗ api      unhealthy GET /health: 503",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, screen(t, buf.String())); diff != "" {
		t.Errorf("final screen (-want +got):\n%s", diff)
	}
}

func TestLiveTruncates(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, Live, WithClock(func() time.Time { return t0 }), WithTick(0), WithWidth(func() int { return 20 }))
	r.Emit(at(0, event.StepStart, "long", ""))
	r.Emit(at(0, event.StepOutput, "long", strings.Repeat("x", 100)))
	r.Close()
	for _, l := range strings.Split(screen(t, buf.String()), "\n") {
		if n := len([]rune(l)); n > 20 {
			t.Errorf("line of %d runes on a 20-column terminal: %q", n, l)
		}
	}
}

func TestConcurrentEmit(t *testing.T) {
	const goroutines, each = 32, 100
	for _, mode := range []Mode{Live, Plain, JSON} {
		t.Run(string(mode), func(t *testing.T) {
			var buf syncBuffer
			r := New(&buf, mode, WithTick(time.Millisecond))
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					name := fmt.Sprintf("step%d", g)
					r.Emit(event.New(event.StepStart, name, ""))
					for i := range each - 2 {
						r.Emit(event.New(event.StepOutput, name, fmt.Sprintf("line %d", i)))
						if i%10 == 0 {
							r.render()
							_ = r.Status()
						}
					}
					r.Emit(event.New(event.StepDone, name, "").WithCode(0))
				}()
			}
			wg.Wait()
			r.Close()
			s := r.Status()
			if len(s.Steps) != goroutines {
				t.Fatalf("status has %d steps, want %d", len(s.Steps), goroutines)
			}
			for _, it := range s.Steps {
				if it.State != event.Succeeded {
					t.Errorf("step %s is %s, want done", it.Name, it.State)
				}
			}
			if mode != Live {
				if got := strings.Count(buf.String(), "\n"); got != goroutines*each {
					t.Errorf("%d lines for %d events", got, goroutines*each)
				}
			}
		})
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

func TestDetect(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name   string
		json   bool
		isTerm bool
		getenv func(string) string
		want   Mode
	}{
		{"json wins", true, true, env("TERM", "xterm"), JSON},
		{"terminal", false, true, env("TERM", "xterm-256color"), Live},
		{"dumb terminal", false, true, env("TERM", "dumb"), Plain},
		{"ci", false, true, env("TERM", "xterm", "CI", "true"), Plain},
		{"pipe", false, false, env("TERM", "xterm"), Plain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := detect(tt.json, tt.isTerm, tt.getenv); got != tt.want {
				t.Errorf("detect = %s, want %s", got, tt.want)
			}
		})
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := Detect(f, false, os.Getenv); got != Plain {
		t.Errorf("Detect(file) = %s, want plain", got)
	}
	if got := Detect(f, true, os.Getenv); got != JSON {
		t.Errorf("Detect(file, json) = %s, want json", got)
	}
	// An injected writer that is no file is never a terminal.
	var buf strings.Builder
	if got := Detect(&buf, false, func(string) string { return "" }); got != Plain {
		t.Errorf("Detect(buffer) = %s, want plain", got)
	}
}
