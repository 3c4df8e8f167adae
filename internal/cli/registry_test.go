package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/oci/regtest"
	"github.com/emu-dev/emu/internal/store"
)

func TestIsRef(t *testing.T) {
	dir := t.TempDir()
	for arg, want := range map[string]bool{
		"ghcr.io/team/demo:1":       true,
		"localhost:5000/demo:1":     true,
		"localhost/demo":            true,
		"127.0.0.1:5000/demo":       true,
		"registry.example.com/demo": true,
		"team/demo:v2":              true,
		"demo:latest":               true,
		"ghcr.io/team/demo@sha256:" + strings.Repeat("a", 64): true,
		"demo":          false, // an instance or image name
		"./out/demo":    false,
		"/abs/demo:1":   false,
		"out/demo":      false, // a bundle directory that is not there
		dir:             false,
		"~/bundles/x:1": false,
	} {
		if got := isRef(arg); got != want {
			t.Errorf("isRef(%q) = %v, want %v", arg, got, want)
		}
	}
}

func images(t *testing.T) []imageRow {
	t.Helper()
	out, errs, code := run(t, "images", "--json")
	if code != ExitOK {
		t.Fatalf("emu images: exit %d: %s", code, errs)
	}
	var rows []imageRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("images --json: %v\n%s", err, out)
	}
	return rows
}

// Push from one store, pull into another, list and remove, all through
// the command line, against a real registry.
func TestPushPullImagesRmi(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	ref := reg.Addr + "/team/demo:1"

	builder := t.TempDir()
	t.Setenv("EMU_HOME", builder)
	regtest.PackedBundle(t, store.At(builder).Images(), "demo", "amd64", 64<<20)
	out, errs, code := run(t, "push", ref, "demo")
	if code != ExitOK {
		t.Fatalf("push: exit %d:\n%s", code, errs)
	}
	if !strings.HasPrefix(out, reg.Addr+"/team/demo@sha256:") || !strings.Contains(errs, "pushed "+ref+" (amd64 sha256:") {
		t.Errorf("push: stdout %q, stderr:\n%s", out, errs)
	}
	built := images(t)
	if len(built) != 1 || built[0].From != "" || built[0].Digest == "" {
		t.Fatalf("images of the builder: %+v", built)
	}

	user := t.TempDir()
	t.Setenv("EMU_HOME", user)
	out, errs, code = run(t, "pull", ref, "--arch", "amd64", "--json")
	if code != ExitOK {
		t.Fatalf("pull: exit %d:\n%s", code, errs)
	}
	var last event.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if err := json.Unmarshal([]byte(line), &last); err != nil {
			t.Fatalf("pull --json line %q: %v", line, err)
		}
	}
	if last.Kind != event.Done || !strings.Contains(last.Msg, "pulled "+ref) {
		t.Errorf("pull --json ends with %+v", last)
	}
	pulled := images(t)
	if len(pulled) != 1 || pulled[0].From != ref || pulled[0].Name != "demo" || pulled[0].Arch != "amd64" {
		t.Fatalf("images after pull: %+v", pulled)
	}
	// The disk is unpacked into the disk cache, as a build seeds it: the
	// first up boots at once.
	man, err := bundle.Read(pulled[0].Dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(store.At(user).DiskCache(), man.Files[store.BundleDisk].SHA256, disk.PackedName)); err != nil || fi.Size() != 64<<20 {
		t.Errorf("unpacked disk after pull: %v", err)
	}
	// The digest a push makes is the one the pull names.
	if pulled[0].Digest != built[0].Digest || pulled[0].Size != built[0].Size {
		t.Errorf("pulled digest %s size %d, built %s size %d", pulled[0].Digest, pulled[0].Size, built[0].Digest, built[0].Size)
	}
	out, _, _ = run(t, "images")
	if !strings.Contains(out, "NAME") || !strings.Contains(out, ref) || !strings.Contains(out, shortDigest(built[0].Digest)) {
		t.Errorf("images table:\n%s", out)
	}

	// An instance with data on the image: rmi refuses, naming it.
	inst := store.At(user).Instance("demo")
	if err := os.MkdirAll(inst.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inst.Overlay(), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code = run(t, "rmi", "demo")
	if code != ExitFailure || !strings.Contains(errs, "image demo is in use by instance demo") || !strings.Contains(errs, "hint: emu down demo") {
		t.Errorf("rmi of a used image: exit %d:\n%s", code, errs)
	}
	// Nor does a pull of another image under that name replace it.
	other := t.TempDir()
	regtest.Bundle(t, other, "demo", "amd64", 1<<10)
	ref2 := reg.Addr + "/team/demo:2"
	if _, errs, code := run(t, "push", ref2, filepath.Join(other, "demo")); code != ExitOK {
		t.Fatalf("push %s: %s", ref2, errs)
	}
	_, errs, code = run(t, "pull", ref2, "--arch", "amd64")
	if code != ExitFailure || !strings.Contains(errs, "in use by instance demo") || !strings.Contains(errs, "hint: pull under another name with --name") {
		t.Errorf("pull over a used image: exit %d:\n%s", code, errs)
	}
	_, errs, code = run(t, "pull", ref2, "--arch", "arm64")
	if code != ExitFailure || !strings.Contains(errs, "no bundle for linux/arm64 (it has: linux/amd64)") || !strings.Contains(errs, "hint: choose one with --arch") {
		t.Errorf("pull of a missing architecture: exit %d:\n%s", code, errs)
	}
	if rows := images(t); len(rows) != 1 || rows[0].From != ref {
		t.Errorf("the used image changed: %+v", rows)
	}
	// Under another name it goes in beside. Its disk is random bytes, not
	// a packed disk: the pull places it and says up will unpack it.
	if _, errs, code := run(t, "pull", ref2, "--arch", "amd64", "--name", "demo-2"); code != ExitOK ||
		!strings.Contains(errs, "stage unpack: failed") || !strings.Contains(errs, "emu up unpacks its disk when it first boots it") {
		t.Errorf("pull --name: exit %d:\n%s", code, errs)
	}
	if rows := images(t); len(rows) != 2 || rows[1].Name != "demo-2" || rows[1].From != ref2 {
		t.Errorf("images: %+v", rows)
	}

	if err := os.Remove(inst.Overlay()); err != nil {
		t.Fatal(err)
	}
	_, errs, code = run(t, "rmi", "demo", "demo-2")
	if code != ExitOK {
		t.Fatalf("rmi: exit %d:\n%s", code, errs)
	}
	if rows := images(t); len(rows) != 0 {
		t.Errorf("images after rmi: %+v", rows)
	}
	_, errs, code = run(t, "rmi", "demo")
	if code != ExitFailure || !strings.Contains(errs, "no image demo in the store") {
		t.Errorf("rmi of a missing image: exit %d:\n%s", code, errs)
	}
}

func TestRegistryUsage(t *testing.T) {
	t.Setenv("EMU_HOME", t.TempDir())
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"pull"}, ExitUsage, "pull takes one reference"},
		{[]string{"pull", "a:1", "b:1"}, ExitUsage, "pull takes one reference"},
		{[]string{"pull", "localhost:5000/x:1", "--name", "Bad_Name"}, ExitUsage, `--name: invalid name "Bad_Name"`},
		{[]string{"pull", "UPPER/Case:1"}, ExitFailure, "parse reference UPPER/Case:1"},
		{[]string{"push"}, ExitUsage, "push needs a reference"},
		{[]string{"push", "localhost:5000/x:1", "nothing"}, ExitFailure, "no image at"},
		{[]string{"rmi"}, ExitUsage, "rmi needs the name"},
		{[]string{"rmi", "../etc"}, ExitUsage, "invalid name"},
		{[]string{"images", "x"}, ExitUsage, "images takes no arguments"},
		{[]string{"down", "localhost:5000/x:1"}, ExitFailure, "no image pulled from localhost:5000/x:1"},
		{[]string{"up", "demo", "--name", "x"}, ExitUsage, "--name and --arch are for emu up REF"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, errs, code := run(t, tt.args...)
			if code != tt.code || !strings.Contains(errs, tt.want) {
				t.Errorf("exit %d (want %d), stderr:\n%s\nwant it to contain %q", code, tt.code, errs, tt.want)
			}
		})
	}
}
