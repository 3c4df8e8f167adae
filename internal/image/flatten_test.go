package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarEntry is one entry of a test layer: a directory (name ends in "/"),
// or a file of size bytes of fill.
type tarEntry struct {
	name string
	size int
	fill byte
}

func layerOf(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(e.size), Typeflag: tar.TypeReg}
		if e.name[len(e.name)-1] == '/' {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(bytes.Repeat([]byte{e.fill}, e.size))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// shadowedImage has 1800 bytes that later layers replace or delete: bin/app
// (1000, replaced), var/cache/junk (500, whiteout), opt/x/f (300, under an
// opaque directory).
func shadowedImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image,
		layerOf(t, tarEntry{name: "etc/"}, tarEntry{name: "etc/a", size: 100, fill: 'a'},
			tarEntry{name: "bin/"}, tarEntry{name: "bin/app", size: 1000, fill: '1'},
			tarEntry{name: "var/"}, tarEntry{name: "var/cache/"}, tarEntry{name: "var/cache/junk", size: 500, fill: 'j'},
			tarEntry{name: "opt/"}, tarEntry{name: "opt/x/"}, tarEntry{name: "opt/x/f", size: 300, fill: 'f'}),
		layerOf(t, tarEntry{name: "bin/app", size: 2000, fill: '2'}, tarEntry{name: "var/cache/.wh.junk"}),
		layerOf(t, tarEntry{name: "opt/x/.wh..wh..opq"}, tarEntry{name: "opt/x/g", size: 50, fill: 'g'}),
	)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint, cfg.Config.Cmd = []string{"/bin/app"}, []string{"serve"}
	cfg.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestShadowedAndFlatten(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "app.tar")
	writeTar(t, src, saveFiles(t, tagged{shadowedImage(t), []string{"app:1"}}))
	imgs := open(t, src, "amd64")

	if n := imgs[0].Shadowed; n != 1800 {
		t.Fatalf("Shadowed = %d; want 1800", n)
	}

	dst := filepath.Join(dir, "flat.tar")
	flat, err := Flatten(ctx, imgs[0], dst)
	if err != nil {
		t.Fatal(err)
	}
	if flat.ID == imgs[0].ID || flat.Layers != 1 {
		t.Errorf("flattened: ID %s (was %s), %d layers", flat.ID, imgs[0].ID, flat.Layers)
	}
	// What Flatten returns is what a fresh Open reads (digests verified).
	again := open(t, dst, "amd64")
	if diff := cmp.Diff([]Image{flat}, again); diff != "" {
		t.Errorf("Open(flattened) (-Flatten +Open):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"app:1"}, again[0].Refs); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
	if !slices.Equal(again[0].Entrypoint, []string{"/bin/app"}) || !slices.Equal(again[0].Cmd, []string{"serve"}) {
		t.Errorf("config lost: entrypoint %q cmd %q", again[0].Entrypoint, again[0].Cmd)
	}
	if n := again[0].Shadowed; n != 0 {
		t.Errorf("Shadowed(flattened) = %d; want 0", n)
	}

	// The one layer holds the image's filesystem as a container sees it.
	src2, f, err := reopen(ctx, again[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src2.close()
	got := map[string]string{}
	if err := eachEntry(ctx, f.layers[0], func(h *tar.Header, r io.Reader) error {
		b, _ := io.ReadAll(r)
		if len(b) > 0 {
			got[h.Name] = string(b[:1]) + "x" + string(rune('0'+len(b)/1000))
		} else {
			got[h.Name] = "dir"
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"etc/": "dir", "etc/a": "ax0", "bin/": "dir", "bin/app": "2x2",
		"var/": "dir", "var/cache/": "dir", "opt/": "dir", "opt/x/": "dir", "opt/x/g": "gx0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flattened layer (-want +got):\n%s", diff)
	}
}

func TestShadowedNone(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app.tar")
	writeTar(t, src, saveFiles(t, tagged{newImage(t, "amd64", 7), []string{"app:1"}}))
	if n := open(t, src, "amd64")[0].Shadowed; n != 0 {
		t.Errorf("Shadowed(random layers) = %d; want 0", n)
	}
}

func TestFlattenLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "app.tar")
	writeTar(t, src, saveFiles(t, tagged{shadowedImage(t), []string{"app:1"}}))
	img := open(t, src, "amd64")[0]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Flatten(ctx, img, filepath.Join(dir, "flat.tar")); !errors.Is(err, context.Canceled) {
		t.Errorf("Flatten with a cancelled context: %v", err)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, "*flat*")); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// A layer whose content Open cannot list (zstd: only its digest is
// checked) leaves the image's shadowed bytes unknown.
func TestShadowedUnknownForZstd(t *testing.T) {
	layerBytes := append([]byte{0x28, 0xb5, 0x2f, 0xfd}, "not really zstd"...)
	diffID := "sha256:" + strings.Repeat("ab", 32)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + diffID + `"]},"config":{}}`)
	id, _, err := v1.SHA256(bytes.NewReader(config))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(manifest{{Config: blobName(id.String()), RepoTags: []string{"z:1"}, Layers: []string{"layer.tar.zst"}}})
	src := filepath.Join(t.TempDir(), "z.tar")
	writeTar(t, src, map[string][]byte{blobName(id.String()): config, "layer.tar.zst": layerBytes, "manifest.json": m})
	if n := open(t, src, "amd64")[0].Shadowed; n != -1 {
		t.Errorf("Shadowed = %d, want -1 (unknown)", n)
	}
}
