package event

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func code(c int) *int { return &c }

func TestFoldAll(t *testing.T) {
	hello := ev(0, Hello, "demo", "agent up").With("mode", "provision")

	var manyLines []Event
	var lastLines []string
	manyLines = append(manyLines, ev(1, StepStart, "noisy", ""))
	for i := range TailLines + 20 {
		manyLines = append(manyLines, ev(2, StepOutput, "noisy", fmt.Sprintf("line %d", i)))
		if i >= 20 {
			lastLines = append(lastLines, fmt.Sprintf("line %d", i))
		}
	}
	manyLines = append(manyLines, ev(3, StepDone, "noisy", "1s").WithCode(0))

	for _, tc := range []struct {
		name   string
		events []Event
		want   Status
	}{
		{
			name: "empty",
			want: Status{},
		},
		{
			name:   "hello",
			events: []Event{hello},
			want:   Status{Hello: &hello, Start: at(0), Last: at(0)},
		},
		{
			name: "stages",
			events: []Event{
				ev(0, StageStart, "rootfs", "debootstrap"),
				ev(5, StageDone, "rootfs", "").With("size", "300MiB"),
				ev(6, StageStart, "disk", ""),
				ev(8, StageFailed, "disk", "mkfs: no space"),
			},
			want: Status{
				Stages: []Item{
					{Name: "rootfs", State: Succeeded, Start: at(0), End: at(5), Msg: "debootstrap", Fields: map[string]string{"size": "300MiB"}},
					{Name: "disk", State: Failing, Start: at(6), End: at(8), Msg: "mkfs: no space"},
				},
				Start: at(0), Last: at(8),
			},
		},
		{
			name: "stage restarted",
			events: []Event{
				ev(0, StageStart, "bake", "first"),
				ev(1, StageFailed, "bake", "x").With("k", "v"),
				ev(2, StageStart, "bake", "again"),
			},
			want: Status{
				Stages: []Item{{Name: "bake", State: Running, Start: at(2), Msg: "again"}},
				Start:  at(0), Last: at(2),
			},
		},
		{
			name: "steps",
			events: []Event{
				ev(0, StepStart, "create-db", ""),
				ev(1, StepOutput, "create-db", "CREATE ROLE"),
				ev(1, StepOutput, "create-db", ""),
				ev(2, StepDone, "create-db", "2s").WithCode(0),
				ev(3, StepStart, "migrate", ""),
				ev(4, StepOutput, "migrate", "error: relation exists"),
				ev(5, StepFailed, "migrate", "step migrate: exited with code 3").WithCode(3),
			},
			want: Status{
				Steps: []Item{
					{Name: "create-db", State: Succeeded, Start: at(0), End: at(2), Msg: "2s", Code: code(0), Tail: []string{"CREATE ROLE", ""}},
					{Name: "migrate", State: Failing, Start: at(3), End: at(5), Msg: "step migrate: exited with code 3", Code: code(3), Tail: []string{"error: relation exists"}},
				},
				Start: at(0), Last: at(5),
			},
		},
		{
			name:   "step output tail capped",
			events: manyLines,
			want: Status{
				Steps: []Item{{Name: "noisy", State: Succeeded, Start: at(1), End: at(3), Msg: "1s", Code: code(0), Tail: lastLines}},
				Start: at(1), Last: at(3),
			},
		},
		{
			name:   "output before start",
			events: []Event{ev(0, StepOutput, "x", "early")},
			want: Status{
				Steps: []Item{{Name: "x", State: Pending, Tail: []string{"early"}}},
				Start: at(0), Last: at(0),
			},
		},
		{
			name: "services",
			events: []Event{
				ev(0, ServiceStarting, "db", "postgresql.service"),
				ev(1, ServiceStarting, "api", "emu-api.service").With("ports", "http=8080"),
				ev(2, ServiceHealthy, "db", "ok"),
				ev(3, ServiceUnhealthy, "api", "no success within 2m0s").With("journal", "panic: boom"),
			},
			want: Status{
				Services: []Item{
					{Name: "db", State: Healthy, Start: at(0), End: at(2), Msg: "ok"},
					{Name: "api", State: Unhealthy, Start: at(1), End: at(3), Msg: "no success within 2m0s", Fields: map[string]string{"journal": "panic: boom"}},
				},
				Start: at(0), Last: at(3),
			},
		},
		{
			name: "service fields kept when an event has none",
			events: []Event{
				ev(0, ServiceStarting, "api", "").With("ports", "http=8080"),
				ev(1, ServiceHealthy, "api", "ok"),
			},
			want: Status{
				Services: []Item{{Name: "api", State: Healthy, Start: at(0), End: at(1), Msg: "ok", Fields: map[string]string{"ports": "http=8080"}}},
				Start:    at(0), Last: at(1),
			},
		},
		{
			name: "service restarted after unhealthy",
			events: []Event{
				ev(0, ServiceStarting, "api", ""),
				ev(1, ServiceUnhealthy, "api", "down"),
				ev(5, ServiceStarting, "api", "again"),
			},
			want: Status{
				Services: []Item{{Name: "api", State: Starting, Start: at(5), Msg: "again"}},
				Start:    at(0), Last: at(5),
			},
		},
		{
			name:   "healthy without starting",
			events: []Event{ev(4, ServiceHealthy, "db", "ok")},
			want: Status{
				Services: []Item{{Name: "db", State: Healthy, Start: at(4), End: at(4), Msg: "ok"}},
				Start:    at(4), Last: at(4),
			},
		},
		{
			name:   "ready and done",
			events: []Event{hello, ev(1, Ready, "", "all services healthy"), ev(2, Log, "", "note"), ev(3, Done, "", "shutting down")},
			want:   Status{Hello: &hello, Ready: true, Done: true, Start: at(0), Last: at(3)},
		},
		{
			name: "failed with name",
			events: []Event{
				ev(0, StepStart, "seed", ""),
				ev(1, StepFailed, "seed", "exit 1").WithCode(1),
				ev(2, Failed, "seed", "step seed: exited with code 1"),
			},
			want: Status{
				Steps:  []Item{{Name: "seed", State: Failing, Start: at(0), End: at(1), Msg: "exit 1", Code: code(1)}},
				Failed: true, Err: "step seed: exited with code 1", FailedName: "seed",
				Start: at(0), Last: at(2),
			},
		},
		{
			name:   "failed without name",
			events: []Event{ev(0, Failed, "", "wait for provision request: context canceled")},
			want:   Status{Failed: true, Err: "wait for provision request: context canceled", Start: at(0), Last: at(0)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := FoldAll(tc.events)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("FoldAll mismatch (-want +got):\n%s", diff)
			}
			// Fold one at a time is the same thing.
			var s Status
			for _, e := range tc.events {
				s = Fold(s, e)
			}
			if diff := cmp.Diff(got, s); diff != "" {
				t.Errorf("Fold one by one differs from FoldAll (-FoldAll +Fold):\n%s", diff)
			}
		})
	}
}

func TestTailKeepsItsOwnArray(t *testing.T) {
	// The capped tail is a fresh slice: the dropped lines are not kept alive
	// behind it, and its capacity does not grow without bound.
	var s Status
	s = Fold(s, ev(0, StepStart, "x", ""))
	for i := range 10 * TailLines {
		s = Fold(s, ev(1, StepOutput, "x", fmt.Sprint(i)))
	}
	tail := s.Steps[0].Tail
	if len(tail) != TailLines {
		t.Fatalf("tail has %d lines, want %d", len(tail), TailLines)
	}
	if cap(tail) > 2*TailLines+1 {
		t.Errorf("tail capacity %d grew past about twice TailLines", cap(tail))
	}
	if tail[0] != fmt.Sprint(9*TailLines) || tail[TailLines-1] != fmt.Sprint(10*TailLines-1) {
		t.Errorf("tail = %q ... %q, want the last %d lines", tail[0], tail[TailLines-1], TailLines)
	}
}

func TestStatusRunning(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []Event
		want   string
	}{
		{"nothing", nil, ""},
		{"stage", []Event{ev(0, StageStart, "rootfs", "")}, "rootfs"},
		{"innermost stage", []Event{ev(0, StageStart, "provision", ""), ev(1, StageStart, "bake", "")}, "bake"},
		{"step inside stage", []Event{ev(0, StageStart, "bake", ""), ev(1, StepStart, "seed", "")}, "seed"},
		{"step done, stage still running", []Event{ev(0, StageStart, "bake", ""), ev(1, StepStart, "seed", ""), ev(2, StepDone, "seed", "").WithCode(0)}, "bake"},
		{"all done", []Event{ev(0, StageStart, "bake", ""), ev(1, StepStart, "seed", ""), ev(2, StepDone, "seed", ""), ev(3, StageDone, "bake", "")}, ""},
		{"failed step", []Event{ev(0, StageStart, "bake", ""), ev(1, StepStart, "seed", ""), ev(2, StepFailed, "seed", ""), ev(3, StageFailed, "bake", "")}, ""},
		{"services do not count", []Event{ev(0, ServiceStarting, "db", "")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FoldAll(tc.events).Running(); got != tc.want {
				t.Errorf("Running() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestItemElapsed(t *testing.T) {
	now := at(100)
	for _, tc := range []struct {
		name string
		it   Item
		want time.Duration
	}{
		{"not started", Item{}, 0},
		{"running", Item{Start: at(40)}, 60 * time.Second},
		{"finished", Item{Start: at(40), End: at(45)}, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.it.Elapsed(now); got != tc.want {
				t.Errorf("Elapsed = %v, want %v", got, tc.want)
			}
		})
	}
}

// A transfer's progress updates its running stage's fields; a progress
// event for a stage not started starts it; done replaces the fields.
func TestFoldStageProgress(t *testing.T) {
	p := func(s int, name, done string) Event {
		return ev(s, StageProgress, name, "").With(FieldDone, done).With(FieldTotal, "100")
	}
	st := FoldAll([]Event{
		ev(0, StageStart, "disk.tar.zst", ""),
		p(1, "disk.tar.zst", "40"),
		p(2, "disk.tar.zst", "70"),
		p(2, "pull", "70"),
	})
	want := []Item{
		{Name: "disk.tar.zst", State: Running, Start: at(0), Fields: map[string]string{FieldDone: "70", FieldTotal: "100"}},
		{Name: "pull", State: Running, Start: at(2), Fields: map[string]string{FieldDone: "70", FieldTotal: "100"}},
	}
	if diff := cmp.Diff(want, st.Stages); diff != "" {
		t.Errorf("stages (-want +got):\n%s", diff)
	}
	st = Fold(st, ev(3, StageDone, "disk.tar.zst", "").With("size", "100"))
	if it := st.Stages[0]; it.State != Succeeded || it.Fields["size"] != "100" || it.Fields[FieldDone] != "" {
		t.Errorf("after done: %+v", it)
	}
}

// A log event about a forwarded port records what the agent found there,
// by SERVICE.PORT; other log events leave Ports alone.
func TestFoldPortNotes(t *testing.T) {
	var s Status
	s = Fold(s, New(Log, "db", "port sql: guest port 5432 listens on 127.0.0.1:5432 only: relaying").
		With(FieldPort, "sql").With(FieldReach, "guest port 5432 listens on 127.0.0.1:5432 only"))
	before := s
	s = Fold(s, New(Log, "cache", "port resp: nothing listens on guest port 6379").
		With(FieldPort, "resp").With(FieldReach, "nothing listens on guest port 6379"))
	s = Fold(s, New(Log, "api", "a line of its own"))
	want := map[string]string{
		"db.sql":     "guest port 5432 listens on 127.0.0.1:5432 only",
		"cache.resp": "nothing listens on guest port 6379",
	}
	if len(s.Ports) != len(want) {
		t.Fatalf("Ports = %v, want %v", s.Ports, want)
	}
	for k, v := range want {
		if s.Ports[k] != v {
			t.Errorf("Ports[%s] = %q, want %q", k, s.Ports[k], v)
		}
	}
	if len(before.Ports) != 1 {
		t.Errorf("a later fold changed an earlier status: %v", before.Ports)
	}
}
