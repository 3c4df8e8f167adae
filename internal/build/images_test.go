package build

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/image"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

const containerStack = `name: shop
images: [images/api.tar]
services:
  api:
    image: demo-api:latest
    volumes: ["data:/data"]
    health: {tcp: 8080}
bake:
  - name: migrate
    container: demo-api
    run: [migrate]
    env: {TOKEN: s3cret}
  - name: notes
    run: [/bin/true]
`

func parseStack(t *testing.T, yaml string, files ...string) *spec.Stack {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		p := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("not an image"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := spec.Parse([]byte(yaml), filepath.Join(dir, "emu.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const apiID = "sha256:61d3b0fb399e0000000000000000000000000000000000000000000000000000"

func TestResolveImages(t *testing.T) {
	s := parseStack(t, containerStack, "images/api.tar")
	imgs := []image.Image{{ID: apiID, Refs: []string{"demo-api:latest"}}}
	ids, err := resolveImages(s, imgs)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"demo-api:latest": apiID, "demo-api": apiID}, ids); diff != "" {
		t.Errorf("ids (-want +got):\n%s", diff)
	}

	// A name no image holds: a stack file error at the field, with its line.
	_, err = resolveImages(s, []image.Image{{ID: apiID, Refs: []string{"other:1"}}})
	if !errors.Is(err, spec.ErrInvalid) {
		t.Fatalf("err = %v, want spec.ErrInvalid", err)
	}
	for _, want := range []string{"emu.yaml:5: services.api.image:", "emu.yaml:10: bake[0].container:", "other:1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestProvisionRequestContainers(t *testing.T) {
	s := parseStack(t, containerStack, "images/api.tar")
	req := provisionRequest(s, map[string]string{"demo-api:latest": apiID, "demo-api": apiID})
	if !req.Prune {
		t.Error("Prune = false for a stack with containers")
	}
	if diff := cmp.Diff([]string{"data"}, req.Volumes); diff != "" {
		t.Errorf("Volumes (-want +got):\n%s", diff)
	}
	for _, p := range spec.EngineSlim {
		if !slices.Contains(req.Slim, p) {
			t.Errorf("Slim lacks the engine's %s", p)
		}
	}
	mig := req.Steps[0]
	if mig.Run[0] != "/usr/bin/podman" || mig.Run[len(mig.Run)-2] != strings.TrimPrefix(apiID, "sha256:") || mig.Run[len(mig.Run)-1] != "migrate" {
		t.Errorf("migrate runs %q", mig.Run)
	}
	if mig.Env["TOKEN"] != "s3cret" || strings.Contains(strings.Join(mig.Run, " "), "s3cret") {
		t.Errorf("the step's env must travel as env, not argv: run %q env %v", mig.Run, mig.Env)
	}
	if diff := cmp.Diff([]string{"/bin/true"}, req.Steps[1].Run); diff != "" {
		t.Errorf("a plain step changed (-want +got):\n%s", diff)
	}

	plain := parseStack(t, "name: plain\nbake: [{name: a, run: [/bin/true]}]\n")
	if req := provisionRequest(plain, nil); req.Prune || len(req.Slim) != 0 || len(req.Volumes) != 0 {
		t.Errorf("a stack without containers asks for %+v", req)
	}
}

func TestImagesStageRejectsCorruptImage(t *testing.T) {
	s := parseStack(t, containerStack, "images/api.tar")
	rec := &event.Recorder{}
	b := &builder{opts: Options{Stack: s, Home: store.At(t.TempDir()), Sink: rec}, work: t.TempDir()}
	_, err := b.images(context.Background())
	var be *Error
	if !errors.As(err, &be) || !errors.Is(err, image.ErrInvalid) {
		t.Fatalf("images stage error = %v, want a build error wrapping image.ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "images[0]") || !strings.Contains(err.Error(), "api.tar") || be.Hint == "" {
		t.Errorf("error %q (hint %q) should name images[0], the file, and hint", err, be.Hint)
	}
}

func TestStagesFor(t *testing.T) {
	if got := StagesFor(parseStack(t, "name: plain\n")); slices.Contains(got, "images") {
		t.Errorf("StagesFor(no images) = %v", got)
	}
	if got := StagesFor(parseStack(t, containerStack, "images/api.tar")); got[0] != "images" {
		t.Errorf("StagesFor(images) = %v, want images first", got)
	}
	if got := GuestBase(parseStack(t, containerStack, "images/api.tar")); !slices.Contains(got.Packages, "podman") {
		t.Errorf("GuestBase packages = %v, want the engine", got.Packages)
	}
}
