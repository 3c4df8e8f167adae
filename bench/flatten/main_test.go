package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var epoch = time.Unix(0, 0).UTC()

func tarOf(t *testing.T, files ...file) v1.Layer {
	t.Helper()
	b, err := layerTar(files, epoch)
	if err != nil {
		t.Fatal(err)
	}
	return newRawLayer(b)
}

func dir(n string) file {
	return file{h: tar.Header{Name: n + "/", Typeflag: tar.TypeDir, Mode: 0o755}}
}
func reg(n, s string) file {
	return file{h: tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644}, data: []byte(s)}
}

var config = v1.Config{
	Entrypoint:   []string{"/usr/local/bin/demo-api"},
	Cmd:          []string{"serve"},
	Env:          []string{"PATH=/usr/bin:/bin", "A=b"},
	User:         "65534:65534",
	WorkingDir:   "/srv",
	ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	Labels:       map[string]string{"org.example": "yes"},
}

// threeLayers writes a three-layer image with a replaced file and a whiteout
// to a docker-archive and returns its path.
func threeLayers(t *testing.T) string {
	t.Helper()
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: "amd64", OS: "linux", Config: config, RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(base,
		mutate.Addendum{Layer: tarOf(t, dir("etc"), reg("etc/passwd", "root:x:0:0::/:/bin/sh\n"),
			dir("usr"), dir("usr/local"), dir("usr/local/bin"), reg(binPath, "old binary"))},
		mutate.Addendum{Layer: tarOf(t, dir("var"), dir("var/cache"), dir("var/cache/build"),
			reg(junkPath, "junk"), dir("usr"), dir("usr/local"), dir("usr/local/bin"), reg(binPath, "middle binary"))},
		mutate.Addendum{Layer: tarOf(t, dir("var"), dir("var/cache"), dir("var/cache/build"),
			reg("var/cache/build/.wh.junk", ""), dir("usr"), dir("usr/local"), dir("usr/local/bin"), reg(binPath, "new binary"))},
	)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "in.tar")
	if err := save(p, img, []string{"demo-api:latest", "example.com/demo:1"}); err != nil {
		t.Fatal(err)
	}
	return p
}

// contents is the filesystem of the one image in the docker-archive at p.
func contents(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	fs := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fs
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		fs[h.Name] = string(b)
	}
}

func TestFlatten(t *testing.T) {
	in := threeLayers(t)
	out := filepath.Join(t.TempDir(), "out.tar")
	if err := run("flatten", in, out); err != nil {
		t.Fatal(err)
	}
	img, tags, err := load(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"demo-api:latest", "example.com/demo:1"}; !reflect.DeepEqual(tags, want) {
		t.Errorf("RepoTags %q, want %q", tags, want)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	fs := contents(t, img)
	if got := fs[binPath]; got != "new binary" {
		t.Errorf("/%s = %q, want the newest layer's", binPath, got)
	}
	if _, ok := fs[junkPath]; ok {
		t.Errorf("/%s survived its whiteout", junkPath)
	}
	for n := range fs {
		if filepath.Base(n) == ".wh.junk" {
			t.Errorf("whiteout %s in the flattened layer", n)
		}
	}
	if fs["etc/passwd"] == "" {
		t.Error("/etc/passwd lost")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cf.Config, config) {
		t.Errorf("config %+v, want %+v", cf.Config, config)
	}
	if cf.Architecture != "amd64" || cf.OS != "linux" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}

	// The layer is stored uncompressed (its blob is its diff), and the same
	// input gives the same bytes.
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatal(err)
	}
	diffID, _ := layers[0].DiffID()
	// Named by its diff ID (ggcr: HEX.tar; internal/image: blobs/sha256/HEX).
	if got := m[0].Layers[0]; got != diffID.Hex+".tar" && got != "blobs/sha256/"+diffID.Hex {
		t.Errorf("layer blob %s, want one named by the diff ID %s (uncompressed)", got, diffID.Hex)
	}
	again := filepath.Join(t.TempDir(), "again.tar")
	if err := run("flatten", in, again); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two flattens of the same image differ")
	}
}

func TestShadow(t *testing.T) {
	in := threeLayers(t)
	out := filepath.Join(t.TempDir(), "out.tar")
	if err := run("shadow", in, out); err != nil {
		t.Fatal(err)
	}
	img, _, err := load(out)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	if len(layers) != 5 {
		t.Fatalf("%d layers, want 5", len(layers))
	}
	fs := contents(t, img)
	if got := fs[binPath]; got != "new binary\x00emu-v3\x00" {
		t.Errorf("/%s = %q", binPath, got)
	}
	if _, ok := fs[junkPath]; ok {
		t.Errorf("/%s survived its whiteout", junkPath)
	}
	cf, _ := img.ConfigFile()
	if !reflect.DeepEqual(cf.Config, config) {
		t.Errorf("config %+v, want %+v", cf.Config, config)
	}
	again := filepath.Join(t.TempDir(), "again.tar")
	if err := run("shadow", in, again); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two shadows of the same image differ")
	}
}
