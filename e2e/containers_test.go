package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/cli"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/store"
)

// TestContainersBuildAndRun builds examples/containers (the demo API as a
// container image, migrated and seeded from that image at build time,
// PostgreSQL and Valkey beside it) and runs it: up, healthy, an item
// written survives down and up, and the API's output is in `emu logs`.
func TestContainersBuildAndRun(t *testing.T) {
	root := needDebian(t)
	ex := t.TempDir()
	b, err := os.ReadFile(filepath.Join(root, "examples/containers/emu.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// A secret for the container step: it must be nowhere in the image.
	const secret = "ctr-s3cret-0b5e27d1-never-in-the-image"
	yaml := strings.Replace(string(b), "run: [migrate]\n    env: {", "run: [migrate]\n    env: {BAKE_TOKEN: \""+secret+"\", ", 1)
	if !strings.Contains(yaml, secret) {
		t.Fatal("could not add the secret to the example's migrate step")
	}
	stack := filepath.Join(ex, "emu.yaml")
	if err := os.WriteFile(stack, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "demo-api")
	gobuild(t, root, bin, "./examples/demo/cmd/demo-api")
	mk := exec.Command("go", "run", "./examples/containers/mkimage", "-bin", bin, "-tag", "demo-api:latest",
		"-o", filepath.Join(ex, "images/demo-api.tar"))
	mk.Dir = root
	if err := os.MkdirAll(filepath.Join(ex, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v: %s", err, out)
	}

	home := newHome(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	out := t.TempDir()
	stdout, stderr, code := run(ctx, "build", "-f", stack, "--out", out, "--json")
	if code != 0 {
		t.Fatalf("emu build exited %d:\n%s", code, stderr)
	}
	st := event.FoldAll(decode(t, stdout))
	if !st.Done || st.Failed {
		t.Fatalf("build stream: done=%v failed=%v err=%s", st.Done, st.Failed, st.Err)
	}
	stages := map[string]event.State{}
	for _, it := range st.Stages {
		stages[it.Name] = it.State
	}
	for _, name := range []string{"images", "provision", "verify"} {
		if stages[name] != event.Succeeded {
			t.Errorf("stage %s: %s", name, stages[name])
		}
	}
	for _, step := range []string{"create-db", "migrate", "seed"} {
		ok := false
		for _, it := range st.Steps {
			ok = ok || it.Name == step && it.State == event.Succeeded
		}
		if !ok {
			t.Errorf("bake step %s did not succeed", step)
		}
	}
	dir := filepath.Join(out, "containers")
	man, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bundle: disk %d bytes; stages %+v", man.Files[store.BundleDisk].Size, man.Stages)
	// The container step's secret is in no file of the image: not in the
	// engine's database, not in the container's config (both gone, their
	// blocks trimmed). The local build left the raw disk in the disk cache.
	raw := filepath.Join(store.At(home).DiskCache(), man.Files[store.BundleDisk].SHA256, disk.PackedName)
	if hasBytes(t, raw, secret) {
		t.Errorf("the container step's secret is in the image's disk")
	}

	inst := store.At(home).Instance("containers")
	mark := inst.Dir
	t.Cleanup(func() {
		run(context.Background(), "down", dir, "--poweroff")
		for _, pid := range qemuPids(mark) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	port := freePort(t)
	portFlag := "--port=api.http=" + strconv.Itoa(port)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	up := func(extra ...string) {
		t.Helper()
		if _, stderr, code := run(ctx, append([]string{"up", dir, portFlag}, extra...)...); code != 0 {
			t.Fatalf("emu up exited %d:\n%s", code, stderr)
		}
	}
	down := func(extra ...string) {
		t.Helper()
		if _, stderr, code := run(ctx, append([]string{"down", dir}, extra...)...); code != 0 {
			t.Fatalf("emu down exited %d:\n%s", code, stderr)
		}
		if pids := qemuPids(mark); len(pids) > 0 {
			t.Fatalf("qemu still running after down: %v", pids)
		}
	}

	up()
	if code := httpStatus(t, "GET", base+"/health", ""); code != 200 {
		t.Fatalf("GET /health = %d after up", code)
	}
	if body := httpBody(t, base+"/items"); !strings.Contains(body, "apple") {
		t.Errorf("the seed rows (from the container step) are missing: %s", body)
	}
	if code := httpStatus(t, "POST", base+"/items", `{"name":"kept-in-the-overlay"}`); code != 201 {
		t.Fatalf("POST /items = %d", code)
	}
	starts := startCount(t, base)
	// emu exec --service runs a command in the service's container.
	if out, stderr, code := run(ctx, "exec", dir, "--service", "api", "--", "/usr/local/bin/demo-api", "version"); code != 0 || strings.TrimSpace(out) == "" {
		t.Errorf("emu exec --service api: exit %d, stdout %q:\n%s", code, out, stderr)
	}
	// The container's output is the unit's journal.
	if logs, stderr, code := run(ctx, "logs", "--file", stack, "api"); code != 0 || !strings.Contains(logs, "listening") {
		t.Errorf("emu logs api: exit %d: %s%s", code, logs, stderr)
	}
	// down suspends; the up below resumes it, and its new -e values
	// restart the container that reads them.
	down()
	// -e reaches the container (through the runtime env file): it turns
	// on the API's POST /exit.
	// NO_SIGNAL_HANDLER makes the API a program without a SIGTERM
	// handler: the final down shows it stops at once all the same.
	up("-e", "ALLOW_EXIT=1", "-e", "NO_SIGNAL_HANDLER=1")
	if body := httpBody(t, base+"/items"); !strings.Contains(body, "kept-in-the-overlay") {
		t.Errorf("item lost across down/up: %s", body)
	}
	// The API counts its starts in a file on a named volume: kept too.
	n := startCount(t, base)
	if n <= starts {
		t.Errorf("starts = %d after down and up, was %d: the volume's file was lost", n, starts)
	}
	// emu logs -f api follows the container's output: its last lines
	// first, then what it logs from now on.
	follow := startFollow(t, "logs", "-f", "--file", stack, "api")
	follow.waitFor(t, "listening", time.Minute)
	// The API fails on request; restart: always starts it again.
	if code := httpStatus(t, "POST", base+"/exit", ""); code != 202 {
		t.Fatalf("POST /exit = %d, want 202 (ALLOW_EXIT from up -e)", code)
	}
	if !restarted(base, n, 2*time.Minute) {
		t.Errorf("the API did not come back after it exited (restart: always)")
	}
	follow.waitFor(t, "exiting on request", time.Minute)
	// Following leaves the agent's channel free between its questions.
	if out, stderr, code := run(ctx, "status", "-f", stack); code != 0 || !strings.Contains(out, "api") {
		t.Errorf("emu status while logs -f runs: exit %d: %s%s", code, out, stderr)
	}
	if code := follow.stop(t); code != 0 {
		t.Errorf("emu logs -f api exited %d after Ctrl-C: %s", code, follow.stderr.String())
	}
	// Without an init passing SIGTERM on, the handler-less API as its
	// container's PID 1 would outlive SIGTERM, and its unit's stop would
	// wait out TimeoutStopSec (30 s) before the kill. The agent times each
	// service's stop, in the guest, and says so on the console. (A plain
	// down suspends: nothing stops then.)
	start := time.Now()
	down("--poweroff")
	t.Logf("down of a container without a SIGTERM handler took %s", time.Since(start).Round(time.Millisecond))
	console, err := os.ReadFile(inst.Serial())
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`emu-agent: service api stopped in (\S+)`).FindSubmatch(console)
	if m == nil {
		t.Fatalf("no stop time of the api on the console:\n%s", tail(string(console), 30))
	}
	took, err := time.ParseDuration(string(m[1]))
	t.Logf("the api's unit stopped in %s", took)
	if err != nil || took >= 30*time.Second {
		t.Errorf("the api's unit stopped in %s (%v): its stop ran into the 30 s timeout", m[1], err)
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// following is an emu command running until stop, its output readable as
// it comes.
type following struct {
	cancel         context.CancelFunc
	stdout, stderr lockedBuffer
	code           chan int
}

func startFollow(t *testing.T, args ...string) *following {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &following{cancel: cancel, code: make(chan int, 1)}
	go func() { f.code <- cli.Main(ctx, args, &f.stdout, &f.stderr) }()
	t.Cleanup(cancel)
	return f
}

// waitFor waits until the output has s, failing the test after within.
func (f *following) waitFor(t *testing.T, s string, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(f.stdout.String(), s) {
		select {
		case code := <-f.code:
			t.Fatalf("emu exited %d before printing %q:\n%s%s", code, s, f.stdout.String(), f.stderr.String())
		case <-deadline.C:
			t.Fatalf("no %q within %s; output so far:\n%s%s", s, within, f.stdout.String(), f.stderr.String())
		case <-tick.C:
		}
	}
}

// stop interrupts the command, as Ctrl-C does, and returns its exit code.
func (f *following) stop(t *testing.T) int {
	t.Helper()
	f.cancel()
	select {
	case code := <-f.code:
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("emu did not return within 30 s of Ctrl-C")
		return -1
	}
}

// lockedBuffer is a bytes.Buffer safe to read while a command writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// restarted waits until the API answers again with a start count above n.
func restarted(base string, n int, within time.Duration) bool {
	c := http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(base + "/starts"); err == nil {
			var v struct{ Starts int }
			err = json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			if err == nil && v.Starts > n {
				return true
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return false
}

// startCount reads the API's start counter (a file on its volume).
func startCount(t *testing.T, base string) int {
	t.Helper()
	var v struct {
		Starts int
		Seeded string
	}
	if err := json.Unmarshal([]byte(httpBody(t, base+"/starts")), &v); err != nil || v.Starts < 1 {
		t.Fatalf("GET /starts: %v (starts %d)", err, v.Starts)
	}
	// The seed step's note, written into the volume at build time.
	if !strings.HasPrefix(v.Seeded, "seeded ") {
		t.Errorf("GET /starts: seeded = %q, want the note the seed step left on the volume", v.Seeded)
	}
	return v.Starts
}

// hasBytes reports whether the file holds s, reading only its data (a
// sparse disk's holes are skipped).
func hasBytes(t *testing.T, path, s string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8<<20)
	var off int64
	for off < fi.Size() {
		data, err := f.Seek(off, 3) // SEEK_DATA
		if err != nil {
			return false // no data after off
		}
		hole, err := f.Seek(data, 4) // SEEK_HOLE
		if err != nil {
			t.Fatal(err)
		}
		for p := data; p < hole; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-p)], p)
			if bytes.Contains(buf[:n], []byte(s)) {
				return true
			}
			if err != nil || p+int64(n) >= hole {
				break
			}
			// Overlap chunks so a match across a boundary is found.
			p += int64(n - len(s) + 1)
		}
		off = hole
	}
	return false
}
