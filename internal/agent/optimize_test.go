package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// Candidate scripts: what each prints and how it exits when verified. The
// agent's test runs on the host, so shell scripts stand in for binaries;
// what a candidate is (ELF or not) does not matter to the agent.
const (
	passes   = "#!/bin/sh\necho \"demo 1.0 $*\"\n"
	fails    = "#!/bin/sh\necho broken >&2\nexit 1\n"
	hangs    = "#!/bin/sh\nsleep 60\n"
	wrongOut = "#!/bin/sh\necho hello\n"
	garbage  = "\x7fELF\x02\x01\x01 not really an executable"
)

// binaryFixture lays out a binary as the host does: the original at dst,
// the candidates under dir/0/<name>/app, and returns the request's item.
func binaryFixture(t *testing.T, dir, orig string, cands [][2]string, v *proto.Verify) proto.Binary {
	t.Helper()
	dst := filepath.Join(dir, "usr", "local", "bin", "app")
	writeExec(t, dst, orig, 0o751)
	b := proto.Binary{Dst: dst, Verify: v}
	for _, c := range cands {
		p := filepath.Join(dir, "binopt", "0", c[0], "app")
		writeExec(t, p, c[1], 0o700)
		b.Candidates = append(b.Candidates, proto.Candidate{Name: c[0], Path: p})
	}
	return b
}

func writeExec(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func TestInstall(t *testing.T) {
	verify := &proto.Verify{Args: []string{"--version"}, Output: "demo 1.0 --version", Timeout: 2 * time.Second}
	tests := []struct {
		name     string
		orig     string
		cands    [][2]string
		verify   *proto.Verify
		timeout  time.Duration
		want     string // the chosen candidate
		verified bool
		ran      []string // candidates verified, in order, and whether they passed
		reason   string
		err      string
	}{
		{name: "compressed passes", orig: passes, cands: [][2]string{{"compressed", passes + "#c\n"}, {"stripped", passes + "#s\n"}},
			verify: verify, want: "compressed", verified: true, ran: []string{"compressed ok"}},
		{name: "compressed fails", orig: passes, cands: [][2]string{{"compressed", fails}, {"stripped", passes + "#s\n"}},
			verify: verify, want: "stripped", verified: true, ran: []string{"compressed exit code 1, want 0", "stripped ok"},
			reason: "the compressed file fails its verify (exit code 1, want 0)"},
		{name: "compressed hangs", orig: passes, cands: [][2]string{{"compressed", hangs}, {"stripped", passes + "#s\n"}},
			verify: verify, timeout: 300 * time.Millisecond, want: "stripped", verified: true,
			ran: []string{"compressed still running after 300ms", "stripped ok"}, reason: "still running after 300ms"},
		{name: "compressed does not run", orig: passes, cands: [][2]string{{"compressed", garbage}, {"stripped", passes + "#s\n"}},
			verify: verify, want: "stripped", verified: true, reason: "the compressed file fails its verify (does not run: "},
		{name: "wrong output", orig: passes, cands: [][2]string{{"compressed", wrongOut}},
			verify: verify, want: "original", verified: true, ran: []string{`compressed output lacks "demo 1.0 --version"`, "original ok"},
			reason: `output lacks "demo 1.0 --version"`},
		{name: "only the original passes", orig: passes, cands: [][2]string{{"compressed", fails}, {"stripped", fails}},
			verify: verify, want: "original", verified: true,
			ran:    []string{"compressed exit code 1, want 0", "stripped exit code 1, want 0", "original ok"},
			reason: "the compressed file fails its verify (exit code 1, want 0); the stripped file fails its verify (exit code 1, want 0)"},
		{name: "the original fails too", orig: fails, cands: [][2]string{{"compressed", fails}},
			verify: verify, err: "the original fails its verify too (exit code 1, want 0)"},
		{name: "no verify installs the first unrun", orig: passes, cands: [][2]string{{"compressed", fails}, {"stripped", passes}},
			want: "compressed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			v := tt.verify
			if v != nil && tt.timeout > 0 {
				vv := *v
				vv.Timeout = tt.timeout
				v = &vv
			}
			b := binaryFixture(t, dir, tt.orig, tt.cands, v)
			want := tt.orig
			for _, c := range tt.cands {
				if c[0] == tt.want {
					want = c[1]
				}
			}
			a := newAgent(Options{})
			e, err := a.install(context.Background(), b)
			if tt.err != "" {
				var oe *OptimizeError
				if !errors.As(err, &oe) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("install: %v, want an *OptimizeError with %q", err, tt.err)
				}
				if got, _ := os.ReadFile(b.Dst); string(got) != tt.orig {
					t.Errorf("dst changed: %q", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("install: %v", err)
			}
			var c proto.BinaryChoice
			if err := e.DecodeData(&c); err != nil {
				t.Fatalf("event %s: %v", e, err)
			}
			if e.Kind != event.Log || e.Name != proto.OptimizeStage || c.Dst != b.Dst || c.Chosen != tt.want || c.Verified != tt.verified {
				t.Errorf("event %s %+v, want chosen %s, verified %v", e, c, tt.want, tt.verified)
			}
			if !strings.Contains(c.Reason, tt.reason) || (tt.reason == "" && c.Reason != "") {
				t.Errorf("reason %q, want %q", c.Reason, tt.reason)
			}
			checks := c.Checks
			if tt.ran != nil {
				var ran []string
				for _, c := range checks {
					r := c.Reason
					if c.OK {
						r = "ok"
					}
					ran = append(ran, c.Candidate+" "+r)
				}
				if diff := cmp.Diff(tt.ran, ran); diff != "" {
					t.Errorf("checks (-want +got):\n%s", diff)
				}
			}
			if tt.verify == nil && len(checks) != 0 {
				t.Errorf("ran candidates without a verify: %v", checks)
			}
			got, err := os.ReadFile(b.Dst)
			if err != nil || string(got) != want {
				t.Errorf("dst holds %q (%v), want the %s file %q", got, err, tt.want, want)
			}
			if fi, _ := os.Stat(b.Dst); fi.Mode().Perm() != 0o751 {
				t.Errorf("dst mode %v, want the original's 0751", fi.Mode().Perm())
			}
			if c.Size != int64(len(want)) {
				t.Errorf("size %d, want %d", c.Size, len(want))
			}
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestProvisionOptimizes runs the whole provision: the binaries are settled
// before the services start and the bake runs, and no candidate stays.
func TestProvisionOptimizes(t *testing.T) {
	dir := t.TempDir()
	scratch := filepath.Join(dir, "var", "lib", "emu", "binopt")
	verify := &proto.Verify{Args: []string{"--version"}, Output: "demo 1.0"}
	b := binaryFixture(t, dir, passes, [][2]string{{"compressed", fails}, {"stripped", passes + "#s\n"}}, verify)
	// Lay the candidates under the scratch directory, as the host does.
	for i, c := range b.Candidates {
		p := filepath.Join(scratch, "0", c.Name, "app")
		writeExec(t, p, map[string]string{"compressed": fails, "stripped": passes + "#s\n"}[c.Name], 0o755)
		b.Candidates[i].Path = p
	}
	// Second names for the original and the candidate not chosen: their
	// bytes must be gone from the disk, not only their names.
	origLink, unchosenLink := filepath.Join(dir, "orig.link"), filepath.Join(dir, "compressed.link")
	for link, target := range map[string]string{origLink: b.Dst, unchosenLink: b.Candidates[0].Path} {
		if err := os.Link(target, link); err != nil {
			t.Fatal(err)
		}
	}
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{{Name: "db", Unit: "db.service", Health: proto.Health{Exec: []string{"true"}}}}}
	h, events := provision(t, Options{Config: cfg, OptimizeDir: scratch}, proto.Request{
		Services: []string{"db"},
		Optimize: []proto.Binary{b},
		Steps:    []proto.Step{sh("use", b.Dst+" --version", dir)},
	})
	if err := h.result(); err != nil {
		t.Fatalf("provision: %v\n%s", err, dump(events))
	}
	want := []string{"hello demo", "stage.start optimize", "stage.done optimize", "stage.start services", "service.starting db",
		"service.healthy db", "stage.done services", "stage.start bake", "step.start use", "step.output use: demo 1.0 --version",
		"step.done use", "stage.done bake", "stage.start slim", "stage.done slim", "done"}
	if diff := cmp.Diff(want, summary(events)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	e, ok := find(events, event.Log, proto.OptimizeStage)
	var c proto.BinaryChoice
	if !ok || e.DecodeData(&c) != nil || c.Chosen != "stripped" {
		t.Errorf("optimize event %v (%+v), want the stripped file chosen", e, c)
	}
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Errorf("candidates left: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(scratch)); !os.IsNotExist(err) {
		t.Errorf("empty parent of the candidates left: %v", err)
	}
	for _, link := range []string{origLink, unchosenLink} {
		got, err := os.ReadFile(link)
		if err != nil || len(got) == 0 || strings.Trim(string(got), "\x00") != "" {
			t.Errorf("%s: %q (%v), want its bytes wiped to zeros", filepath.Base(link), got, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(b.Dst)); len(ents) != 1 {
		t.Errorf("%s holds %d entries, want only the installed file", filepath.Dir(b.Dst), len(ents))
	}
}

func TestProvisionOriginalFailsVerify(t *testing.T) {
	dir := t.TempDir()
	b := binaryFixture(t, dir, fails, [][2]string{{"compressed", fails}}, &proto.Verify{Args: []string{"--version"}})
	h, events := provision(t, Options{OptimizeDir: filepath.Join(dir, "binopt")}, proto.Request{
		Optimize: []proto.Binary{b},
		Steps:    []proto.Step{sh("never", "echo must not run", dir)},
	})
	if err := h.result(); err == nil {
		t.Fatal("provision succeeded, want a failure")
	}
	last := events[len(events)-1]
	if last.Kind != event.Failed || last.Name != proto.OptimizeStage || !strings.Contains(last.Msg, b.Dst+": the original fails its verify too") {
		t.Errorf("last event %s, want failed optimize naming %s", last, b.Dst)
	}
	if _, ok := find(events, event.StepStart, "never"); ok {
		t.Error("the bake ran after the failure")
	}
}
