// Package e2e runs emu the way a user does, on the real demo stack: build
// the image (mmdebstrap, QEMU provisioning, compression), then boot it until
// every service is healthy. Slow (minutes under TCG); skipped with -short.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/cli"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
	"github.com/jackc/pgx/v5"
)

func TestDemoBuildAndVerify(t *testing.T) {
	root := needDebian(t)
	// The demo's own binary, as `make demo-api` builds it, into a copy of
	// the example so the test writes nothing into the source tree.
	demo := t.TempDir()
	for _, f := range []string{"emu.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "examples/demo", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(demo, f), b, 0o644)
	}
	gobuild(t, root, filepath.Join(demo, "bin/linux-amd64/demo-api"), "./examples/demo/cmd/demo-api")

	home := newHome(t)

	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	stack := filepath.Join(demo, "emu.yaml")
	out := t.TempDir()
	stdout, stderr, code := run(ctx, "build", "-f", stack, "--out", out, "--json")
	if code != 0 {
		t.Fatalf("emu build exited %d:\n%s", code, stderr)
	}
	evs := decode(t, stdout)
	st := event.FoldAll(evs)
	if !st.Done || st.Failed {
		t.Fatalf("build stream: done=%v failed=%v err=%s", st.Done, st.Failed, st.Err)
	}
	for _, step := range []string{"create-db", "migrate", "seed"} {
		found := false
		for _, it := range st.Steps {
			if it.Name == step && it.State == event.Succeeded {
				found = true
			}
		}
		if !found {
			t.Errorf("bake step %s did not succeed", step)
		}
	}
	dir := filepath.Join(out, "demo")
	man, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(man.Services) != 3 || man.Files[store.BundleDisk].Size == 0 {
		t.Errorf("manifest: %d services, disk %d bytes", len(man.Services), man.Files[store.BundleDisk].Size)
	}
	t.Logf("bundle: disk %d bytes; stages %+v", man.Files[store.BundleDisk].Size, man.Stages)

	stdout, stderr, code = run(ctx, "verify", dir, "--json")
	if code != 0 {
		t.Fatalf("emu verify exited %d:\n%s", code, stderr)
	}
	vst := event.FoldAll(decode(t, stdout))
	if !vst.Ready {
		t.Fatalf("verify never saw ready: %+v", vst.Services)
	}
	for _, s := range vst.Services {
		if s.State != event.Healthy {
			t.Errorf("service %s is %s", s.Name, s.State)
		}
	}

	t.Run("lifecycle", func(t *testing.T) { lifecycle(ctx, t, home, dir) })
	t.Run("durability", func(t *testing.T) { durability(ctx, t, home, dir) })
	t.Run("load", func(t *testing.T) { load(ctx, t, home, dir) })
	t.Run("registry", func(t *testing.T) { registry(ctx, t, dir) })
}

// needDebian skips (fails in CI) without what a Debian build needs, and
// returns the repository's root.
func needDebian(t *testing.T) string {
	t.Helper()
	vmtest.Skip(t)
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("e2e needs mmdebstrap")
		}
		t.Skip("e2e needs mmdebstrap")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// newHome makes an EMU_HOME for the test, with the test agent, and the
// shared root filesystem cache: it outlives the test, since a Debian tree is
// the slow part and its key covers everything that goes into it.
func newHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("EMU_HOME", home)
	t.Setenv("EMU_AGENT", vmtest.Agent(t))
	cache := filepath.Join(vmtest.CacheDir(t), "rootfs")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(home, "cache"), 0o755)
	if err := os.Symlink(cache, store.At(home).RootfsCache()); err != nil {
		t.Fatal(err)
	}
	return home
}

// lifecycle runs the image the way a developer does: up, write, down, up,
// the data is still there; kill -9 and recover; reset; a taken port; a
// service that never becomes healthy.
func lifecycle(ctx context.Context, t *testing.T, home, bundleDir string) {
	inst := store.At(home).Instance("demo")
	mark := inst.Dir // every QEMU of this test names files in it
	t.Cleanup(func() {
		run(context.Background(), "down", bundleDir)
		for _, pid := range qemuPids(mark) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	port := freePort(t)
	// The databases too: their forwards reach Debian's stock configs,
	// which listen on the guest's loopback only (a NAT rule in the guest's
	// kernel sends the forwards there).
	portFlags := []string{"--port=api.http=" + strconv.Itoa(port),
		"--port=postgres.sql=" + strconv.Itoa(freePort(t)), "--port=valkey.resp=" + strconv.Itoa(freePort(t))}
	upArgs := func(extra ...string) []string {
		return append(append([]string{"up", bundleDir}, portFlags...), extra...)
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	up := func(t *testing.T, extra ...string) string {
		t.Helper()
		_, stderr, code := run(ctx, upArgs(extra...)...)
		if code != 0 {
			t.Fatalf("emu up exited %d:\n%s", code, stderr)
		}
		t.Logf("up: %s", firstLine(stderr, "is ready in"))
		return stderr
	}
	down := func(t *testing.T, extra ...string) {
		t.Helper()
		_, stderr, code := run(ctx, append([]string{"down", bundleDir}, extra...)...)
		if code != 0 {
			t.Fatalf("emu down exited %d:\n%s", code, stderr)
		}
		if pids := qemuPids(mark); len(pids) > 0 {
			t.Fatalf("qemu still running after down: %v", pids)
		}
	}

	// The first up of the image saves its ready snapshot.
	if stderr := up(t); !strings.Contains(stderr, "ready snapshot saved") {
		t.Errorf("the first up saved no ready snapshot:\n%s", stderr)
	} else if !strings.Contains(stderr, "guest port 5432 listens on 127.0.0.1:5432 only: the kernel forwards to it (NAT)") {
		t.Errorf("the first up did not say PostgreSQL's port is forwarded by NAT:\n%s", stderr)
	}
	if code := httpStatus(t, "GET", base+"/health", ""); code != 200 {
		t.Fatalf("GET /health = %d after up", code)
	}
	if code := httpStatus(t, "POST", base+"/items", `{"name":"kept-across-restarts"}`); code != 201 {
		t.Fatalf("POST /items = %d", code)
	}
	// emu run hands a host command the connect values with the instance's
	// real port (here the one --port chose, not the stack file's).
	if out, stderr, code := run(ctx, "run", bundleDir, "--", "sh", "-c", `echo "$API_URL"`); code != 0 || strings.TrimSpace(out) != base {
		t.Errorf("emu run: exit %d, stdout %q, want %q:\n%s", code, out, base, stderr)
	}
	// Real clients on the host reach the databases through their
	// forwards, with the URLs emu env gives.
	databases(ctx, t, bundleDir)
	// A second up of the running instance reports it and starts nothing.
	if _, stderr, code := run(ctx, upArgs()...); code != 0 || !strings.Contains(stderr, "already running") {
		t.Errorf("second up: exit %d:\n%s", code, stderr)
	}
	if n := len(qemuPids(mark)); n != 1 {
		t.Errorf("%d qemu processes after a second up, want 1", n)
	}
	// down suspends, up resumes: the same PostgreSQL process (its start
	// time lives only in its memory), the item there.
	pgStart := postmasterStart(ctx, t, bundleDir)
	down(t)
	if out, _, code := run(ctx, "status", bundleDir); code != 0 || !strings.Contains(out, "suspended") {
		t.Errorf("status after down: exit %d: %s", code, out)
	}
	if stderr := up(t); !strings.Contains(stderr, "resumed") {
		t.Errorf("up after down did not resume:\n%s", stderr)
	}
	if got := postmasterStart(ctx, t, bundleDir); got != pgStart {
		t.Errorf("postgres started at %s after the resume, %s before: the guest was booted, not resumed", got, pgStart)
	}
	if body := httpBody(t, base+"/items"); !strings.Contains(body, "kept-across-restarts") {
		t.Errorf("item lost across a suspend: %s", body)
	}

	down(t, "--poweroff")
	// The guest stopped cleanly: PostgreSQL shut down, no recovery needed.
	if b, _ := os.ReadFile(inst.Serial()); !strings.Contains(string(b), "Power down") && !strings.Contains(string(b), "reboot: Power down") {
		t.Errorf("the console does not show a clean power-down")
	}

	if stderr := up(t); strings.Contains(stderr, "resumed") {
		t.Errorf("up after down --poweroff resumed:\n%s", stderr)
	}
	if body := httpBody(t, base+"/items"); !strings.Contains(body, "kept-across-restarts") {
		t.Errorf("item lost across down/up: %s", body)
	}

	// kill -9 of QEMU: status notices, clears the stale pid, and up recovers.
	pids := qemuPids(mark)
	if len(pids) != 1 {
		t.Fatalf("%d qemu processes before kill -9, want 1", len(pids))
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	waitDead(t, pids[0])
	stdout, _, code := run(ctx, "status", bundleDir, "--json")
	if code != 0 || !strings.Contains(stdout, `"running": false`) {
		t.Errorf("status after kill -9: exit %d: %s", code, stdout)
	}
	if _, err := os.Stat(inst.PID()); err == nil {
		t.Errorf("stale pid file kept after status")
	}
	up(t)
	if body := httpBody(t, base+"/items"); !strings.Contains(body, "kept-across-restarts") {
		t.Errorf("item lost after kill -9 and up: %s", body)
	}

	// A port taken by someone else: a clear error before boot.
	down(t)
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(ctx, upArgs()...)
	ln.Close()
	if code == 0 || !strings.Contains(stderr, "api (http)") || !strings.Contains(stderr, "in use") {
		t.Errorf("up with the port taken: exit %d:\n%s", code, stderr)
	}
	if pids := qemuPids(mark); len(pids) > 0 {
		t.Errorf("qemu started although the port was taken")
	}

	// A new env value on a resume reaches the service (it restarts): here
	// one that makes it unhealthy, which is named with its last probe.
	_, stderr, code = run(ctx, upArgs("-e", "VALKEY_ADDR=127.0.0.1:1")...)
	if code == 0 || !strings.Contains(stderr, "service api") || !strings.Contains(stderr, "503") {
		t.Errorf("up with an unhealthy api: exit %d:\n%s", code, stderr)
	}
	if strings.Contains(stderr, "booting cold") {
		t.Errorf("a resume whose service failed booted cold again:\n%s", stderr)
	}
	if pids := qemuPids(mark); len(pids) > 0 {
		t.Errorf("qemu left running after a failed up: %v", pids)
	}

	// reset: the data goes, the image stays.
	if _, stderr, code := run(ctx, "reset", bundleDir); code != 0 {
		t.Fatalf("reset: exit %d:\n%s", code, stderr)
	}
	if _, err := os.Stat(inst.Overlay()); err == nil {
		t.Errorf("overlay kept after reset")
	}
	// A fresh instance starts from the image's ready snapshot.
	if stderr := up(t); !strings.Contains(stderr, "ready snapshot") {
		t.Errorf("up after reset did not start from the ready snapshot:\n%s", stderr)
	}
	if body := httpBody(t, base+"/items"); strings.Contains(body, "kept-across-restarts") || !strings.Contains(body, "apple") {
		t.Errorf("after reset want only the seed rows: %s", body)
	}
	down(t)
}

// databases connects a real PostgreSQL client (pgx) and a RESP client from
// the host through the forwarded ports, at the addresses emu env prints.
func databases(ctx context.Context, t *testing.T, bundleDir string) {
	t.Helper()
	env := emuEnv(ctx, t, bundleDir)
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(qctx, env["DATABASE_URL"])
	if err != nil {
		t.Fatalf("pgx connect %s: %v", env["DATABASE_URL"], err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(qctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n == 0 {
		t.Errorf("SELECT count(*) FROM items through the forward: %d, %v", n, err)
	}
	c, err := net.DialTimeout("tcp", env["VALKEY_ADDR"], 10*time.Second)
	if err != nil {
		t.Fatalf("dial valkey %s: %v", env["VALKEY_ADDR"], err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || reply != "+PONG\r\n" {
		t.Errorf("PING through the forward: %q, %v", reply, err)
	}
}

// emuEnv is `emu env --json` of the instance: its connect values and
// ports.
func emuEnv(ctx context.Context, t *testing.T, bundleDir string) map[string]string {
	t.Helper()
	out, stderr, code := run(ctx, "env", "--json", bundleDir)
	var env map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &env) != nil {
		t.Fatalf("emu env --json: exit %d: %s%s", code, out, stderr)
	}
	return env
}

// postmasterStart is PostgreSQL's start time, which only its memory holds.
func postmasterStart(ctx context.Context, t *testing.T, bundleDir string) string {
	t.Helper()
	env := emuEnv(ctx, t, bundleDir)
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(qctx, env["DATABASE_URL"])
	if err != nil {
		t.Fatalf("pgx connect %s: %v", env["DATABASE_URL"], err)
	}
	defer conn.Close(context.Background())
	var at time.Time
	if err := conn.QueryRow(qctx, "SELECT pg_postmaster_start_time()").Scan(&at); err != nil {
		t.Fatalf("SELECT pg_postmaster_start_time(): %v", err)
	}
	return at.UTC().Format(time.RFC3339Nano)
}

// firstLine is the first line of s that holds sub.
func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func httpStatus(t *testing.T, method, url, body string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	c := http.Client{Timeout: 20 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// qemuPids lists QEMU processes whose command line holds mark (the test's
// own state directory: other emu instances on the machine do not count).
func qemuPids(mark string) []int {
	var pids []int
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if strings.Contains(args[0], "qemu-system") && bytes.Contains(b, []byte(mark)) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(m)))
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitDead waits until the process has exited: gone, or a zombie. Its
// command line empties before that, while the kernel still tears it down
// (1 GiB of guest memory), and until then it counts as running.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu %d did not exit within 60 s of kill -9", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func run(ctx context.Context, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := cli.Main(ctx, args, &out, &errb)
	return out.String(), errb.String(), code
}

func decode(t *testing.T, s string) []event.Event {
	t.Helper()
	var evs []event.Event
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var e event.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("--json output line %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func gobuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	gobuildArch(t, dir, out, pkg, "amd64")
}

// gobuildArch builds pkg as a static program for linux/arch.
func gobuildArch(t *testing.T, dir, out, pkg, arch string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
}
