package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// newImage makes a small image of two random layers for linux/arch.
func newImage(t *testing.T, arch string, seed int64) v1.Image {
	t.Helper()
	img, err := random.Image(512, 2, random.WithSource(rand.NewSource(seed)))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Config.Entrypoint = []string{"/app"}
	cfg.Config.Cmd = []string{"serve", "--port", "8080"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func idOf(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

type tagged struct {
	img  v1.Image
	tags []string
}

// saveFiles lays imgs out as `docker save` (25+) does: uncompressed layers
// named by diff ID, then manifest.json.
func saveFiles(t *testing.T, imgs ...tagged) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	var m manifest
	for _, ti := range imgs {
		cfg, err := ti.img.RawConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		d := descriptor{Config: blobName(idOf(t, ti.img)), RepoTags: ti.tags}
		files[d.Config] = cfg
		layers, err := ti.img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range layers {
			diffID, err := l.DiffID()
			if err != nil {
				t.Fatal(err)
			}
			rc, err := l.Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			rc.Close()
			files[blobName(diffID.String())] = b
			d.Layers = append(d.Layers, blobName(diffID.String()))
		}
		m = append(m, d)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	files["manifest.json"] = b
	return files
}

// writeTar writes files as a tar at path, manifest.json last.
func writeTar(t *testing.T, path string, files map[string][]byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var names []string
	for n := range files {
		if n != "manifest.json" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if _, ok := files["manifest.json"]; ok {
		names = append(names, "manifest.json")
	}
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n]))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func save(t *testing.T, imgs ...tagged) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "images.tar")
	writeTar(t, path, saveFiles(t, imgs...))
	return path
}

// newLayout writes an OCI layout holding the given indexes's descriptors.
func newLayout(t *testing.T, idx v1.ImageIndex) (string, layout.Path) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "oci")
	p, err := layout.Write(dir, idx)
	if err != nil {
		t.Fatal(err)
	}
	return dir, p
}

func refName(ref string) layout.Option {
	return layout.WithAnnotations(map[string]string{refAnnotation: ref})
}

func multiPlatform(amd, arm v1.Image) v1.ImageIndex {
	return mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
}

func open(t *testing.T, path, arch string) []Image {
	t.Helper()
	imgs, err := Open(context.Background(), path, arch)
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

func TestOpen(t *testing.T) {
	amd, amd2, arm := newImage(t, "amd64", 1), newImage(t, "amd64", 2), newImage(t, "arm64", 3)
	one := func(t *testing.T) string { return save(t, tagged{amd, []string{"demo-api:latest"}}) }

	tests := []struct {
		name string
		src  func(t *testing.T) string
		arch string
		want []Image // Source and Format are filled in
	}{
		{
			name: "docker-archive one image",
			src:  one,
			want: []Image{{ID: idOf(t, amd), Refs: []string{"demo-api:latest"}}},
		},
		{
			name: "docker-archive two images",
			src: func(t *testing.T) string {
				return save(t,
					tagged{amd, []string{"docker.io/library/demo-api:latest", "demo-api:1"}},
					tagged{amd2, []string{"ghcr.io/x/y:1"}})
			},
			want: []Image{
				{ID: idOf(t, amd), Refs: []string{"demo-api:latest", "demo-api:1"}},
				{ID: idOf(t, amd2), Refs: []string{"ghcr.io/x/y:1"}},
			},
		},
		{
			name: "docker-archive with gzip'd layers",
			src: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "gz.tar")
				if err := tarball.WriteToFile(path, name.MustParseReference("worker:2"), amd2); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: []Image{{ID: idOf(t, amd2), Refs: []string{"worker:2"}}},
		},
		{
			name: "oci layout one image",
			src: func(t *testing.T) string {
				dir, p := newLayout(t, empty.Index)
				if err := p.AppendImage(amd, refName("registry.local:5000/team/api:v2")); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: []Image{{ID: idOf(t, amd), Refs: []string{"registry.local:5000/team/api:v2"}}},
		},
		{
			name: "oci layout tag-only ref.name, full containerd name",
			src: func(t *testing.T) string {
				dir, p := newLayout(t, empty.Index)
				if err := p.AppendImage(amd, refName("latest")); err != nil {
					t.Fatal(err)
				}
				if err := p.AppendImage(amd2, layout.WithAnnotations(map[string]string{
					refAnnotation: "1", nameAnnotation: "docker.io/library/worker:1"})); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: []Image{{ID: idOf(t, amd)}, {ID: idOf(t, amd2), Refs: []string{"worker:1"}}},
		},
		{
			name: "oci layout nested multi-platform index, amd64",
			src: func(t *testing.T) string {
				dir, p := newLayout(t, empty.Index)
				if err := p.AppendIndex(multiPlatform(amd, arm), refName("demo-api:latest")); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: []Image{{ID: idOf(t, amd), Refs: []string{"demo-api:latest"}}},
		},
		{
			name: "oci layout nested multi-platform index, arm64",
			src: func(t *testing.T) string {
				dir, p := newLayout(t, empty.Index)
				if err := p.AppendIndex(multiPlatform(amd, arm), refName("demo-api:latest")); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			arch: "arm64",
			want: []Image{{ID: idOf(t, arm), Refs: []string{"demo-api:latest"}}},
		},
		{
			name: "oci layout whose index.json is multi-platform",
			src: func(t *testing.T) string {
				dir, _ := newLayout(t, multiPlatform(amd, arm))
				return dir
			},
			arch: "arm64",
			want: []Image{{ID: idOf(t, arm)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.src(t)
			arch := tt.arch
			if arch == "" {
				arch = "amd64"
			}
			got := open(t, path, arch)
			format := DockerArchive
			if fi, _ := os.Stat(path); fi.IsDir() {
				format = OCILayout
			}
			for i := range tt.want {
				w := &tt.want[i]
				w.Source, w.Format, w.OS, w.Arch, w.Layers = path, format, "linux", arch, 2
				w.Entrypoint, w.Cmd = []string{"/app"}, []string{"serve", "--port", "8080"}
			}
			if diff := cmp.Diff(tt.want, got, cmpIgnoreSize); diff != "" {
				t.Errorf("Open(%s) (-want +got):\n%s", path, diff)
			}
			for _, img := range got {
				if img.Size <= 0 {
					t.Errorf("%s: Size = %d", img.ID, img.Size)
				}
				if len(img.DiffIDs) != img.Layers {
					t.Errorf("%s: %d diff IDs for %d layers", img.ID, len(img.DiffIDs), img.Layers)
				}
			}
		})
	}
}

// cmpIgnoreSize ignores the fields a test cannot know in advance: sizes and
// diff IDs (checked on their own).
var cmpIgnoreSize = cmp.FilterPath(func(p cmp.Path) bool {
	return p.Last().String() == ".Size" || p.Last().String() == ".DiffIDs"
}, cmp.Ignore())

func TestOpenSizeOCI(t *testing.T) {
	img := newImage(t, "amd64", 4)
	dir, p := newLayout(t, empty.Index)
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want := m.Layers[0].Size + m.Layers[1].Size
	if got := open(t, dir, "amd64")[0].Size; got != want {
		t.Errorf("Size = %d, want %d (the compressed layers)", got, want)
	}
}

func TestOpenInvalid(t *testing.T) {
	amd, arm := newImage(t, "amd64", 1), newImage(t, "arm64", 3)
	layerOf := func(t *testing.T, img v1.Image) v1.Layer {
		t.Helper()
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		return ls[1]
	}
	diffID := func(t *testing.T) string {
		h, err := layerOf(t, amd).DiffID()
		if err != nil {
			t.Fatal(err)
		}
		return h.String()
	}
	digest := func(t *testing.T) string {
		h, err := layerOf(t, amd).Digest()
		if err != nil {
			t.Fatal(err)
		}
		return h.String()
	}
	archive := func(t *testing.T, edit func(files map[string][]byte)) string {
		t.Helper()
		files := saveFiles(t, tagged{amd, []string{"demo-api:latest"}})
		edit(files)
		path := filepath.Join(t.TempDir(), "api.tar")
		writeTar(t, path, files)
		return path
	}
	oci := func(t *testing.T, edit func(p layout.Path)) string {
		t.Helper()
		dir, p := newLayout(t, empty.Index)
		if err := p.AppendImage(amd, refName("demo-api:latest")); err != nil {
			t.Fatal(err)
		}
		edit(p)
		return dir
	}

	tests := []struct {
		name string
		src  func(t *testing.T) string
		want func(t *testing.T) []string // in the error, besides the file's name
	}{
		{
			name: "truncated tar",
			src: func(t *testing.T) string {
				path := save(t, tagged{amd, nil})
				fi, _ := os.Stat(path)
				if err := os.Truncate(path, fi.Size()/2); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: func(*testing.T) []string { return []string{"truncated"} },
		},
		{
			name: "truncated inside a header",
			src: func(t *testing.T) string {
				path := save(t, tagged{amd, nil})
				if err := os.Truncate(path, 700); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: func(*testing.T) []string { return []string{"truncated"} },
		},
		{
			name: "garbage",
			src: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "garbage.tar")
				b := make([]byte, 4096)
				rand.New(rand.NewSource(1)).Read(b)
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: func(*testing.T) []string { return []string{"not a docker-archive tar or an OCI layout"} },
		},
		{
			name: "empty file",
			src: func(t *testing.T) string {
				path := filepath.Join(t.TempDir(), "empty.tar")
				if err := os.WriteFile(path, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: func(*testing.T) []string { return []string{"not a docker-archive tar"} },
		},
		{
			name: "gzip'd tar",
			src: func(t *testing.T) string {
				b, err := os.ReadFile(save(t, tagged{amd, nil}))
				if err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				zw := gzip.NewWriter(&buf)
				zw.Write(b)
				zw.Close()
				path := filepath.Join(t.TempDir(), "api.tar.gz")
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return path
			},
			want: func(*testing.T) []string { return []string{"gzip", "gunzip it"} },
		},
		{
			name: "no manifest.json",
			src: func(t *testing.T) string {
				return archive(t, func(files map[string][]byte) { delete(files, "manifest.json") })
			},
			want: func(*testing.T) []string { return []string{"manifest.json: not in the archive"} },
		},
		{
			name: "OCI archive",
			src: func(t *testing.T) string {
				return archive(t, func(files map[string][]byte) {
					delete(files, "manifest.json")
					files["index.json"] = []byte("{}")
				})
			},
			want: func(*testing.T) []string { return []string{"an OCI archive", "unpack it"} },
		},
		{
			name: "bad manifest.json",
			src: func(t *testing.T) string {
				return archive(t, func(files map[string][]byte) { files["manifest.json"] = []byte("[{") })
			},
			want: func(*testing.T) []string { return []string{"manifest.json"} },
		},
		{
			name: "manifest.json names a missing layer",
			src: func(t *testing.T) string {
				return archive(t, func(files map[string][]byte) { delete(files, blobName(diffID(t))) })
			},
			want: func(t *testing.T) []string { return []string{"layer " + blobName(diffID(t)) + ": not in the archive"} },
		},
		{
			name: "layer bytes changed",
			src: func(t *testing.T) string {
				return archive(t, func(files map[string][]byte) { files[blobName(diffID(t))][600] ^= 0xff })
			},
			want: func(t *testing.T) []string {
				return []string{"layer " + blobName(diffID(t)), "does not match diff_id " + diffID(t)}
			},
		},
		{
			name: "config changed",
			src: func(t *testing.T) string {
				return archive(t, func(files map[string][]byte) {
					c := files[blobName(idOf(t, amd))]
					files[blobName(idOf(t, amd))] = bytes.Replace(c, []byte("serve"), []byte("SERVE"), 1)
				})
			},
			want: func(t *testing.T) []string { return []string{"config " + idOf(t, amd) + ": digest mismatch"} },
		},
		{
			name: "docker-archive for another platform",
			src:  func(t *testing.T) string { return save(t, tagged{arm, []string{"demo-api:latest"}}) },
			want: func(*testing.T) []string { return []string{"linux/arm64", "linux/amd64"} },
		},
		{
			name: "oci layout missing a blob",
			src: func(t *testing.T) string {
				return oci(t, func(p layout.Path) {
					h, _ := v1.NewHash(digest(t))
					if err := p.RemoveBlob(h); err != nil {
						t.Fatal(err)
					}
				})
			},
			want: func(t *testing.T) []string { return []string{"layer " + digest(t) + ": missing"} },
		},
		{
			name: "oci layout blob changed",
			src: func(t *testing.T) string {
				dir := oci(t, func(layout.Path) {})
				blob := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(digest(t), "sha256:"))
				b, err := os.ReadFile(blob)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0xff
				if err := os.WriteFile(blob, b, 0o644); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: func(t *testing.T) []string { return []string{"layer " + digest(t) + ": digest mismatch (got sha256:"} },
		},
		{
			name: "oci layout blob truncated",
			src: func(t *testing.T) string {
				dir := oci(t, func(layout.Path) {})
				blob := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(digest(t), "sha256:"))
				if err := os.Truncate(blob, 100); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: func(t *testing.T) []string { return []string{"layer " + digest(t)} },
		},
		{
			name: "oci layout for another platform",
			src: func(t *testing.T) string {
				dir, p := newLayout(t, empty.Index)
				if err := p.AppendImage(arm); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: func(*testing.T) []string { return []string{"is for linux/arm64, not linux/amd64"} },
		},
		{
			name: "oci index without the platform",
			src: func(t *testing.T) string {
				idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
					Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
				dir, p := newLayout(t, empty.Index)
				if err := p.AppendIndex(idx); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			want: func(*testing.T) []string { return []string{"no linux/amd64 image, only linux/arm64"} },
		},
		{
			name: "oci layout with no images",
			src: func(t *testing.T) string {
				dir, _ := newLayout(t, empty.Index)
				return dir
			},
			want: func(*testing.T) []string { return []string{"no images"} },
		},
		{
			name: "empty directory",
			src:  func(t *testing.T) string { return t.TempDir() },
			want: func(*testing.T) []string { return []string{"not an OCI image layout"} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.src(t)
			_, err := Open(context.Background(), path, "amd64")
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Open(%s) = %v, want ErrInvalid", path, err)
			}
			t.Log(err)
			msg, ok := strings.CutPrefix(err.Error(), "image "+path+": ")
			if !ok {
				t.Errorf("Open: %v\nwant it to start with the file's name", err)
			}
			for _, want := range tt.want(t) {
				if !strings.Contains(msg, want) {
					t.Errorf("Open: %v\nwant it to say %q", err, want)
				}
			}
		})
	}
}

func TestOpenNotInvalid(t *testing.T) {
	_, err := Open(context.Background(), filepath.Join(t.TempDir(), "none.tar"), "amd64")
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("Open of a missing file = %v, want fs.ErrNotExist and not ErrInvalid", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Open(ctx, save(t, tagged{newImage(t, "amd64", 1), nil}), "amd64")
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrInvalid) {
		t.Errorf("Open with a cancelled context = %v, want context.Canceled and not ErrInvalid", err)
	}
}

func TestWriteDockerArchive(t *testing.T) {
	amd, amd2, arm := newImage(t, "amd64", 1), newImage(t, "amd64", 2), newImage(t, "arm64", 3)
	dir, p := newLayout(t, empty.Index)
	if err := p.AppendIndex(multiPlatform(amd, arm), refName("demo-api:latest")); err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(amd2, refName("latest")); err != nil { // unnamed
		t.Fatal(err)
	}
	tarred := save(t, tagged{newImage(t, "amd64", 5), []string{"ghcr.io/x/y:1"}})
	imgs := append(open(t, dir, "amd64"), open(t, tarred, "amd64")...)

	out := t.TempDir()
	dst := filepath.Join(out, "all.tar")
	if err := WriteDockerArchive(context.Background(), dst, imgs); err != nil {
		t.Fatal(err)
	}
	got := open(t, dst, "amd64")
	ids := func(imgs []Image) (out [][]string) {
		for _, img := range imgs {
			out = append(out, append([]string{img.ID}, img.Refs...))
		}
		return out
	}
	if diff := cmp.Diff(ids(imgs), ids(got)); diff != "" {
		t.Errorf("images written (-want +got):\n%s", diff)
	}

	again := filepath.Join(out, "again.tar")
	if err := WriteDockerArchive(context.Background(), again, imgs); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(dst)
	b2, _ := os.ReadFile(again)
	if !bytes.Equal(b1, b2) {
		t.Error("two writes of the same images differ")
	}
}

func TestWriteDockerArchiveFails(t *testing.T) {
	img := newImage(t, "amd64", 1)
	dir, p := newLayout(t, empty.Index)
	if err := p.AppendImage(img, refName("demo-api:latest")); err != nil {
		t.Fatal(err)
	}
	imgs := open(t, dir, "amd64")
	ls, _ := img.Layers()
	d, _ := ls[1].Digest()
	blob := filepath.Join(dir, "blobs", "sha256", d.Hex)
	b, _ := os.ReadFile(blob)
	b[len(b)/2] ^= 0xff // changed after Open
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	unknown := imgs[0]
	unknown.ID = "sha256:" + strings.Repeat("0", 64)

	for name, imgs := range map[string][]Image{"changed blob": imgs, "unknown image": {unknown}, "none": nil} {
		t.Run(name, func(t *testing.T) {
			out := t.TempDir()
			dst := filepath.Join(out, "all.tar")
			if err := WriteDockerArchive(context.Background(), dst, imgs); err == nil {
				t.Fatal("WriteDockerArchive succeeded")
			}
			if left, _ := os.ReadDir(out); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"demo-api", "demo-api:latest"},
		{"demo-api:1.2", "demo-api:1.2"},
		{"library/demo-api", "demo-api:latest"},
		{"docker.io/library/demo-api:latest", "demo-api:latest"},
		{"index.docker.io/library/demo-api:latest", "demo-api:latest"},
		{"docker.io/someone/app", "someone/app:latest"},
		{"ghcr.io/x/y:1", "ghcr.io/x/y:1"},
		{"localhost:5000/app", "localhost:5000/app:latest"},
		{"app@sha256:" + strings.Repeat("a", 64), "app@sha256:" + strings.Repeat("a", 64)},
		{"Demo", ""},
		{"", ""},
		{"a b", ""},
		{"app:", ""},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("Normalize(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestFind(t *testing.T) {
	a := Image{ID: "sha256:aaaaaaaaaaaa1111" + strings.Repeat("0", 48), Refs: []string{"demo-api:latest", "demo-api:1"}}
	b := Image{ID: "sha256:aaaaaaaaaaaa2222" + strings.Repeat("0", 48), Refs: []string{"ghcr.io/x/y:1"}}
	c := Image{ID: "sha256:cccccccccccc" + strings.Repeat("0", 52)}
	imgs := []Image{a, b, c}
	tests := []struct {
		ref  string
		want string // ID, or text of the error
	}{
		{"demo-api", a.ID},
		{"docker.io/library/demo-api:1", a.ID},
		{"ghcr.io/x/y:1", b.ID},
		{b.ID, b.ID},
		{"aaaaaaaaaaaa2", b.ID},
		{"sha256:cccccccccccc", c.ID},
		{"cccccccccccc", c.ID},
		{"aaaaaaaaaaaa", "matches 2 image IDs"},
		{"cccc", `image "cccc": not among demo-api:latest, demo-api:1, ghcr.io/x/y:1, cccccccccccc (unnamed)`},
		{"demo-api:2", "not among"},
		{"Bad Name", "not among"},
	}
	for _, tt := range tests {
		got, err := Find(imgs, tt.ref)
		switch {
		case strings.HasPrefix(tt.want, "sha256:"):
			if err != nil || got.ID != tt.want {
				t.Errorf("Find(%q) = %s, %v, want %s", tt.ref, got.ID, err, tt.want)
			}
		case err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tt.want):
			t.Errorf("Find(%q) = %s, %v, want an error saying %q", tt.ref, got.ID, err, tt.want)
		}
	}
}
