package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/image"
)

func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("\x7fELF not really a binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	var outs [2][]byte
	for i := range outs {
		out := filepath.Join(dir, fmt.Sprintf("api%d.tar", i))
		if err := run([]string{"-bin", bin, "-tag", "demo-api", "-cmd", "serve --port 8080", "-o", out}, io.Discard); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		outs[i] = b
		mtime := time.Unix(int64(i+1)*1e9, 0) // must not matter
		if err := os.Chtimes(bin, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatal("two runs on the same binary wrote different tars")
	}

	out := filepath.Join(dir, "api0.tar")
	imgs, err := image.Open(context.Background(), out, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	want := image.Image{
		Source: out, Format: image.DockerArchive, ID: imgs[0].ID,
		Refs: []string{"demo-api:latest"}, OS: "linux", Arch: "amd64", Layers: 1, Size: imgs[0].Size, DiffIDs: imgs[0].DiffIDs,
		Entrypoint: []string{"/usr/local/bin/app"}, Cmd: []string{"serve", "--port", "8080"},
	}
	if len(imgs[0].DiffIDs) != 1 {
		t.Errorf("DiffIDs = %v, want one", imgs[0].DiffIDs)
	}
	if diff := cmp.Diff([]image.Image{want}, imgs); diff != "" {
		t.Errorf("image (-want +got):\n%s", diff)
	}

	wantFiles := []string{
		"etc/ 755 0:0", "etc/group 644 0:0", "etc/passwd 644 0:0", "tmp/ 1777 0:0",
		"usr/ 755 0:0", "usr/local/ 755 0:0", "usr/local/bin/ 755 0:0", "usr/local/bin/app 755 0:0",
	}
	if diff := cmp.Diff(wantFiles, layerFiles(t, out)); diff != "" {
		t.Errorf("layer (-want +got):\n%s", diff)
	}
}

// layerFiles lists the one layer's entries: name, mode, owner.
func layerFiles(t *testing.T, archive string) []string {
	t.Helper()
	files := map[string][]byte{}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
	var m []descriptor
	if err := json.Unmarshal(files["manifest.json"], &m); err != nil {
		t.Fatal(err)
	}
	var got []string
	tr = tar.NewReader(bytes.NewReader(files[m[0].Layers[0]]))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %o %d:%d", h.Name, h.Mode, h.Uid, h.Gid))
	}
	return got
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"-bin", "x"}, {"-o", "x.tar"}, {"-bin", "x", "-o", "x.tar", "-dst", "rel/path"}} {
		if err := run(args, io.Discard); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
