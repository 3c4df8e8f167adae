package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

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

// writeImage writes a docker-archive at path of an image named ref whose
// layers are the given files (path -> size), each layer's files replacing
// the previous ones.
func writeImage(t *testing.T, path, ref string, layers ...map[string]int) {
	t.Helper()
	img := empty.Image
	for _, files := range layers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, name := range slices.Sorted(maps.Keys(files)) {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(files[name]), Typeflag: tar.TypeReg})
			tw.Write(bytes.Repeat([]byte{byte(len(name))}, files[name]))
		}
		tw.Close()
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/app"}
	img, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}

func TestImagesStageFlattensOnlyWhatShadows(t *testing.T) {
	const yaml = `name: shop
images: [images/lean.tar, images/fat.tar]
services:
  lean: {image: "lean:1", health: {tcp: 1}}
  fat: {image: "fat:1", health: {tcp: 2}}
`
	s := parseStack(t, yaml, "images/lean.tar", "images/fat.tar")
	// lean: one layer, nothing to gain. fat: its second layer replaces a
	// 2 MB file of the first.
	writeImage(t, s.ImagePath("images/lean.tar"), "lean:1", map[string]int{"lean-app": 4096})
	writeImage(t, s.ImagePath("images/fat.tar"), "fat:1", map[string]int{"app": 2 << 20, "etc-file": 10}, map[string]int{"app": 4096})
	rec := &event.Recorder{}
	b := &builder{opts: Options{Stack: s, Home: store.At(t.TempDir()), Sink: rec}, work: t.TempDir()}
	if _, err := b.images(context.Background()); err != nil {
		t.Fatal(err)
	}
	lean, fat := b.man.Images[0], b.man.Images[1]
	if lean.FlattenedFrom != "" || lean.Shadowed != 0 || b.imageSources[0].path != s.ImagePath("images/lean.tar") {
		t.Errorf("lean image changed: %+v, attached %s", lean, b.imageSources[0].path)
	}
	if fat.FlattenedFrom == "" || fat.Layers != 1 || fat.Shadowed != 2<<20 {
		t.Errorf("fat image: %+v, want flattened to one layer, 2 MiB shadowed", fat)
	}
	// The guest gets the flattened copy, and the service its new ID.
	if got := b.imageSources[1].path; !strings.HasPrefix(got, b.work) {
		t.Errorf("fat image attached from %s, want the flattened copy in the work directory", got)
	}
	if b.imageIDs["fat:1"] != fat.ID || !slices.Equal(b.imageSources[1].ids, []string{fat.ID}) {
		t.Errorf("fat:1 resolves to %s, the disk holds %v; want %s", b.imageIDs["fat:1"], b.imageSources[1].ids, fat.ID)
	}
	imgs, err := image.Open(context.Background(), b.imageSources[1].path, "amd64")
	if err != nil || imgs[0].ID != fat.ID || !slices.Equal(imgs[0].Refs, []string{"fat:1"}) {
		t.Errorf("the flattened archive: %+v, %v", imgs, err)
	}
}

func TestImagesStageKeepsSharedLayers(t *testing.T) {
	const yaml = `name: shop
images: [images/a.tar, images/b.tar]
services:
  a: {image: "a:1", health: {tcp: 1}}
  b: {image: "b:1", health: {tcp: 2}}
`
	s := parseStack(t, yaml, "images/a.tar", "images/b.tar")
	// Both replace a 2 MB file of the same base layer: flattening either
	// would store that base twice.
	base := map[string]int{"app": 2 << 20}
	writeImage(t, s.ImagePath("images/a.tar"), "a:1", base, map[string]int{"app": 10})
	writeImage(t, s.ImagePath("images/b.tar"), "b:1", base, map[string]int{"app": 20})
	rec := &event.Recorder{}
	b := &builder{opts: Options{Stack: s, Home: store.At(t.TempDir()), Sink: rec}, work: t.TempDir()}
	if _, err := b.images(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, r := range b.man.Images {
		if r.FlattenedFrom != "" || r.Shadowed != 2<<20 {
			t.Errorf("image %d: %+v, want kept as is, 2 MiB shadowed", i, r)
		}
	}
	var logs []string
	for _, e := range rec.Events() {
		logs = append(logs, e.Msg)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "not flattened: it shares layers with") {
		t.Errorf("no word of why the images were kept:\n%s", strings.Join(logs, "\n"))
	}
}
