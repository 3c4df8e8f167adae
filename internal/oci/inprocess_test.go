package oci_test

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/oci/regtest"
	"github.com/emu-dev/emu/internal/store"
)

// The same round trip against go-containerregistry's in-process registry:
// it runs where Debian's docker-registry is not installed (a Mac), and
// shows the artifact is not tied to one registry's leniency. A partial
// blob left by an interrupted pull is resumed by Range here too.
func TestInProcessRegistry(t *testing.T) {
	regtest.NoDockerConfig(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	base := t.TempDir()
	amd := regtest.Bundle(t, filepath.Join(base, "amd64"), "demo", "amd64", 1<<20)
	arm := regtest.Bundle(t, filepath.Join(base, "arm64"), "demo", "arm64", 1<<20)
	ref := addr + "/demo:1"
	res := push(t, ref, amd, arm)
	// The two bundles' provision logs are the same bytes: one blob.
	if len(res.Artifacts) != 2 || res.Uploaded != 9 || res.Present != 1 {
		t.Errorf("push: %d artifacts, %d blobs uploaded, %d present; want 2, 9 and 1", len(res.Artifacts), res.Uploaded, res.Present)
	}

	// Half of the disk already on disk, as an interrupted pull leaves it.
	home := store.At(t.TempDir())
	man, err := bundle.Read(arm)
	if err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile(filepath.Join(arm, store.BundleDisk))
	if err != nil {
		t.Fatal(err)
	}
	blobs := filepath.Join(home.Blobs(), "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(blobs, man.Files[store.BundleDisk].SHA256+".partial")
	if err := os.WriteFile(partial, disk[:len(disk)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	pr, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "arm64", Home: home})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, arm, pr.Dir)
	rest := int64(len(disk) - len(disk)/2)
	var others int64
	for n, f := range man.Files {
		if n != store.BundleDisk {
			others += f.Size
		}
	}
	if pr.Fetched != rest+others {
		t.Errorf("fetched %d bytes, want %d: the rest of the disk and the other files", pr.Fetched, rest+others)
	}
}
