package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/proto"
)

func TestRuntimeEnvFiles(t *testing.T) {
	rt := proto.Runtime{
		Instance: "demo",
		Ports:    []proto.Forward{{Service: "api", Name: "http", Guest: 8080, Host: 26701}},
		Env:      map[string]string{"GREETING": `say "hi"`, "MULTI": "a\nb"},
	}
	dir := t.TempDir()
	units, containers := filepath.Join(dir, "env"), filepath.Join(dir, "sub", "container.env")
	if err := WriteEnv(rt, units, containers); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		// systemd's EnvironmentFile unquotes, so values are quoted.
		units: "EMU_INSTANCE=demo\nEMU_PORT_API_HTTP=26701\nGREETING=\"say \\\"hi\\\"\"\nMULTI=\"a\\nb\"\n",
		// podman takes values literally and has no way to write a line
		// break: that override is left out.
		containers: "EMU_INSTANCE=demo\nEMU_PORT_API_HTTP=26701\nGREETING=say \"hi\"\n",
	} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Errorf("%s =\n%s\nwant\n%s", filepath.Base(path), b, want)
		}
	}
	// No runtime config (a build): both files exist, empty.
	if err := WriteEnv(proto.Runtime{}, units, containers); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{units, containers} {
		if fi, err := os.Stat(p); err != nil || fi.Size() != 0 {
			t.Errorf("%s after an empty runtime: %v, %v", p, fi, err)
		}
	}
}

func TestApplyEnvSaysWhetherItChanged(t *testing.T) {
	dir := t.TempDir()
	path, container := filepath.Join(dir, "env"), filepath.Join(dir, "container.env")
	rt := proto.Runtime{Instance: "demo", Env: map[string]string{"KEY": "old"}}
	if changed, err := applyEnv(rt, path, container); err != nil || !changed {
		t.Fatalf("first applyEnv = %v, %v; want changed", changed, err)
	}
	if changed, err := applyEnv(rt, path, container); err != nil || changed {
		t.Errorf("applyEnv of the same runtime = %v, %v; want unchanged", changed, err)
	}
	rt.Env["KEY"] = "new"
	if changed, err := applyEnv(rt, path, container); err != nil || !changed {
		t.Errorf("applyEnv of a new value = %v, %v; want changed", changed, err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), `KEY="new"`) {
		t.Errorf("env file = %q", b)
	}
}
