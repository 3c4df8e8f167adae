package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/store"
)

// Each format reads back as the same values: shell through a real sh's
// eval, dotenv and plain by their rules.
func TestWriteEnvFormats(t *testing.T) {
	env := map[string]string{
		"DATABASE_URL": "postgres://demo:demo@127.0.0.1:26702/demo?sslmode=disable",
		"TRICKY":       `it's "quoted" $HOME \ and`,
	}
	var sh bytes.Buffer
	if err := writeEnv(&sh, env, "shell"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", sh.String()+`printf '%s\n%s' "$DATABASE_URL" "$TRICKY"`).Output()
	if err != nil {
		t.Fatalf("sh: %v\n%s", err, sh.String())
	}
	if got := strings.Split(string(out), "\n"); got[0] != env["DATABASE_URL"] || got[1] != env["TRICKY"] {
		t.Errorf("eval of --format shell gives %q", got)
	}
	var dot bytes.Buffer
	writeEnv(&dot, env, "dotenv")
	if want := `TRICKY="it's \"quoted\" \$HOME \\ and"`; !strings.Contains(dot.String(), want) {
		t.Errorf("dotenv:\n%s\nwant a line %s", dot.String(), want)
	}
	var plain bytes.Buffer
	writeEnv(&plain, env, "plain")
	if !strings.HasPrefix(plain.String(), "DATABASE_URL=postgres://") {
		t.Errorf("plain:\n%s", plain.String())
	}
	if err := writeEnv(&plain, env, "yaml"); err == nil {
		t.Error("--format yaml: no error")
	}
}

// fakeInstance records an instance as up does, its QEMU this test process
// (so it counts as running).
func fakeInstance(t *testing.T, home store.Home, connect map[string]string) {
	t.Helper()
	inst := home.Instance("demo")
	if err := os.MkdirAll(inst.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	info := map[string]any{
		"name": "demo", "pid": os.Getpid(), "connect": connect,
		"ports": []proto.Forward{{Service: "api", Name: "http", Guest: 8080, Host: 26711}},
	}
	b, _ := json.Marshal(info)
	if err := os.WriteFile(inst.State(), b, 0o600); err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	// Field 22, after the command in parentheses.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if err := os.WriteFile(inst.PID(), fmt.Appendf(nil, "%d %s\n", os.Getpid(), f[19]), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEnvAndRun(t *testing.T) {
	root := t.TempDir()
	t.Setenv("EMU_HOME", root)
	home := store.At(root)
	fakeInstance(t, home, map[string]string{"API_URL": "http://127.0.0.1:26711"})

	out, errs, code := run(t, "env", "demo")
	want := "API_URL=http://127.0.0.1:26711\nEMU_INSTANCE=demo\nEMU_PORT_API_HTTP=26711\n"
	if code != ExitOK || out != want {
		t.Errorf("env: exit %d, stdout %q (stderr %s), want %q", code, out, errs, want)
	}
	out, _, _ = run(t, "env", "--json", "demo")
	var m map[string]string
	if err := json.Unmarshal([]byte(out), &m); err != nil || m["API_URL"] != "http://127.0.0.1:26711" {
		t.Errorf("env --json = %q (%v)", out, err)
	}

	out, errs, code = run(t, "run", "demo", "--", "sh", "-c", `echo "$API_URL $EMU_PORT_API_HTTP"; exit 3`)
	if code != 3 || out != "http://127.0.0.1:26711 26711\n" {
		t.Errorf("run: exit %d, stdout %q, stderr %q; want 3 and the values", code, out, errs)
	}
	if strings.Contains(errs, "emu:") {
		t.Errorf("run rendered the command's exit as an error: %q", errs)
	}
	if _, errs, code := run(t, "run", "demo"); code != ExitUsage || !strings.Contains(errs, "needs a command after --") {
		t.Errorf("run without a command: exit %d, %q", code, errs)
	}

	// A stack file at hand: its connect is rendered anew over the ports.
	dir := t.TempDir()
	stack := filepath.Join(dir, "emu.yaml")
	os.WriteFile(stack, []byte("name: demo\nservices:\n  api:\n    unit: api.service\n    ports: [{guest: 8080, name: http}]\n    health: {tcp: 8080}\n"+
		"connect:\n  HEALTH: \"http://127.0.0.1:${ports.api.http}/health\"\n"), 0o644)
	out, errs, code = run(t, "env", "-f", stack)
	if code != ExitOK || !strings.Contains(out, "HEALTH=http://127.0.0.1:26711/health\n") || strings.Contains(out, "API_URL") {
		t.Errorf("env -f: exit %d, stdout %q, stderr %s", code, out, errs)
	}
}

func TestEnvNotStarted(t *testing.T) {
	t.Setenv("EMU_HOME", t.TempDir())
	_, errs, code := run(t, "env", "nothing")
	if code != ExitFailure || !strings.Contains(errs, "nothing has not been started") || !strings.Contains(errs, "hint: emu up") {
		t.Errorf("env of an instance never started: exit %d, %q", code, errs)
	}
}
