package build

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/binopt"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// fakeTools imitates strip (half the size) and upx (a third); upx -t passes.
type fakeTools struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeTools) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, filepath.Base(name)+" "+args[0])
	f.mu.Unlock()
	for i, a := range args {
		if a != "-o" {
			continue
		}
		out, in := args[i+1], args[i+2]
		fi, err := os.Stat(in)
		if err != nil {
			return nil, err
		}
		size, fill := fi.Size()/2, byte('s')
		if strings.Contains(name, "upx") {
			size, fill = fi.Size()/3, 'c'
		}
		return nil, os.WriteFile(out, bytes.Repeat([]byte{fill}, int(size)), 0o600)
	}
	return nil, nil
}

func (f *fakeTools) made() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if !strings.HasSuffix(c, " -t") {
			n++
		}
	}
	return n
}

// planFixture is a builder with an empty tree, and an executable for the
// host's arch (this test binary) as the stack's file.
func planFixture(t *testing.T, opt spec.Optimize) (*builder, *fakeTools, string, *event.Recorder) {
	t.Helper()
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skipf("needs linux/amd64 or linux/arm64")
	}
	if _, err := binopt.FindUPX(); err != nil {
		t.Skipf("the build looks for UPX even with fake tools: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tools := &fakeTools{}
	rec := &event.Recorder{}
	s := &spec.Stack{Name: "t", Base: spec.Base{Arch: runtime.GOARCH},
		Files: []spec.File{{Src: self, Dst: "/usr/local/bin/app", Optimize: opt}}}
	b := &builder{opts: Options{Stack: s, Home: store.At(t.TempDir()), Runner: tools, Sink: rec}}
	return b, tools, t.TempDir(), rec
}

func inject(t *testing.T, b *builder, tree string, i int, src string) {
	t.Helper()
	f := b.opts.Stack.Files[i]
	if err := copyFile(src, filepath.Join(tree, f.Dst), 0o751); err != nil {
		t.Fatal(err)
	}
	if err := b.optimizeFile(context.Background(), tree, i, f, src, 0o751); err != nil {
		t.Fatalf("optimizeFile: %v", err)
	}
}

func withVerify() spec.Optimize {
	o := spec.DefaultOptimize()
	o.Compress = "upx"
	o.Verify = &spec.Verify{Args: []string{"--version"}, Output: "app 1.0"}
	return o
}

func TestOptimizeFileForTheGuest(t *testing.T) {
	b, tools, tree, _ := planFixture(t, withVerify())
	src := b.opts.Stack.Files[0].Src
	inject(t, b, tree, 0, src)

	want := []proto.Binary{{
		Dst: "/usr/local/bin/app",
		Candidates: []proto.Candidate{
			{Name: "compressed", Path: proto.OptimizeDir + "/0/compressed/app"},
			{Name: "stripped", Path: proto.OptimizeDir + "/0/stripped/app"},
		},
		Verify: &proto.Verify{Args: []string{"--version"}, Output: "app 1.0", Timeout: binopt.DefaultVerifyTimeout},
	}}
	if diff := cmp.Diff(want, b.bins.items); diff != "" {
		t.Errorf("request items (-want +got):\n%s", diff)
	}
	if b.bins.budget != 3*binopt.DefaultVerifyTimeout {
		t.Errorf("budget %s, want three verify runs", b.bins.budget)
	}
	orig, _ := os.ReadFile(src)
	size := int64(len(orig))
	for _, c := range []struct {
		path string
		size int64
	}{{"/usr/local/bin/app", size}, {want[0].Candidates[0].Path, size / 2 / 3}, {want[0].Candidates[1].Path, size / 2}} {
		fi, err := os.Stat(filepath.Join(tree, c.path))
		if err != nil || fi.Size() != c.size || fi.Mode().Perm() != 0o751 {
			t.Errorf("%s: %v, want %d bytes, mode 0751", c.path, err, c.size)
		}
	}
	if len(b.man.Binaries) != 1 {
		t.Fatalf("manifest has %d binaries, want 1", len(b.man.Binaries))
	}
	r := b.man.Binaries[0]
	if r.Path != "/usr/local/bin/app" || r.Kind != binopt.Executable || r.Chosen != binopt.Original || r.Verified ||
		r.Original != size || r.Stripped != size/2 || r.Compressed != size/2/3 {
		t.Errorf("report before the guest: %+v", r)
	}

	// The guest's verdict lands in the manifest.
	checks := []proto.Check{
		{Candidate: "compressed", ExitCode: 1, Reason: "exit code 1, want 0", Duration: time.Second},
		{Candidate: "stripped", OK: true, Output: "app 1.0", Duration: 2 * time.Second},
	}
	before := r.Duration
	observe := func(c proto.BinaryChoice) {
		t.Helper()
		e, err := event.New(event.Log, proto.OptimizeStage, "").WithData(c)
		if err != nil {
			t.Fatal(err)
		}
		b.observe(e)
	}
	observe(proto.BinaryChoice{Dst: "/usr/local/bin/app", Chosen: "stripped", Verified: true,
		Reason: "the compressed file fails its verify (exit code 1, want 0)", Checks: checks})
	observe(proto.BinaryChoice{Dst: "/elsewhere", Chosen: "compressed"})
	r = b.man.Binaries[0]
	wantChecks := []proto.Check{
		{Candidate: "compressed", ExitCode: 1, Reason: "exit code 1, want 0", Duration: time.Second},
		{Candidate: "stripped", OK: true, Output: "app 1.0", Duration: 2 * time.Second},
	}
	if diff := cmp.Diff(wantChecks, r.Checks); diff != "" {
		t.Errorf("checks (-want +got):\n%s", diff)
	}
	if r.Chosen != binopt.Stripped || !r.Verified || r.Size() != size/2 || r.Duration != before+3*time.Second ||
		!strings.Contains(r.Reason, "the compressed file fails its verify") {
		t.Errorf("report after the guest: %+v", r)
	}

	// A rebuild with the same binary takes the candidates from the cache.
	n := tools.made()
	b2, _, tree2, rec := planFixture(t, withVerify())
	b2.opts.Home, b2.opts.Runner = b.opts.Home, tools
	inject(t, b2, tree2, 0, src)
	if tools.made() != n {
		t.Errorf("rebuild ran strip or upx again: %v", tools.calls)
	}
	if evs := rec.Events(); len(evs) != 1 || !strings.Contains(evs[0].Msg, "(cached)") {
		t.Errorf("rebuild's events %v, want one saying cached", evs)
	}
	if diff := cmp.Diff(b.bins.items, b2.bins.items); diff != "" {
		t.Errorf("cached request items differ (-first +rebuild):\n%s", diff)
	}
	if got, _ := os.ReadFile(filepath.Join(tree2, want[0].Candidates[0].Path)); int64(len(got)) != size/2/3 {
		t.Errorf("cached compressed candidate has %d bytes", len(got))
	}
	// Another level is another entry.
	o := withVerify()
	o.Level = 5
	b3, _, tree3, _ := planFixture(t, o)
	b3.opts.Home, b3.opts.Runner = b.opts.Home, tools
	inject(t, b3, tree3, 0, src)
	if tools.made() == n {
		t.Error("a new UPX level reused the level-9 candidates")
	}
	if ents, _ := os.ReadDir(filepath.Join(b.opts.Home.Cache, "binopt")); len(ents) != 2 {
		t.Errorf("cache has %d entries, want 2 (no temporary ones)", len(ents))
	}
}

func TestOptimizeFileWithoutVerify(t *testing.T) {
	o := spec.DefaultOptimize()
	o.Compress = "upx"
	b, _, tree, _ := planFixture(t, o)
	src := b.opts.Stack.Files[0].Src
	inject(t, b, tree, 0, src)
	if len(b.bins.items) != 0 {
		t.Errorf("sent %d items to the guest, want none: nothing to verify", len(b.bins.items))
	}
	orig, _ := os.ReadFile(src)
	got, _ := os.ReadFile(filepath.Join(tree, "/usr/local/bin/app"))
	if int64(len(got)) != int64(len(orig))/2/3 || got[0] != 'c' {
		t.Errorf("dst has %d bytes, want the compressed file's %d", len(got), len(orig)/2/3)
	}
	if _, err := os.Stat(filepath.Join(tree, proto.OptimizeDir)); !os.IsNotExist(err) {
		t.Errorf("candidates in the tree: %v", err)
	}
	if r := b.man.Binaries[0]; r.Chosen != binopt.Compressed || r.Verified {
		t.Errorf("report %+v, want compressed, unverified", r)
	}
}

func TestOptimizeFileSkipsScript(t *testing.T) {
	b, tools, tree, rec := planFixture(t, withVerify())
	src := filepath.Join(t.TempDir(), "run.sh")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b.opts.Stack.Files[0].Src = src
	inject(t, b, tree, 0, src)
	if len(b.bins.items) != 0 || len(tools.calls) != 0 {
		t.Errorf("a script was optimized: items %v, tools %v", b.bins.items, tools.calls)
	}
	if r := b.man.Binaries[0]; r.Kind != binopt.Script || r.Chosen != binopt.Original {
		t.Errorf("report %+v, want a script kept", r)
	}
	evs := rec.Events()
	if len(evs) != 1 || !strings.Contains(evs[0].Msg, "/usr/local/bin/app: not optimized: a script") {
		t.Errorf("events %v, want one naming the file and why", evs)
	}
	if got, _ := os.ReadFile(filepath.Join(tree, "/usr/local/bin/app")); string(got) != "#!/bin/sh\necho hi\n" {
		t.Errorf("script changed: %q", got)
	}
}
