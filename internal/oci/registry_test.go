package oci_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/oci/regtest"
	"github.com/emu-dev/emu/internal/store"
)

// These tests run against Debian's docker-registry (distribution 2.8) on
// 127.0.0.1, most through a proxy that counts, corrupts or stalls what it
// serves. Bundles are synthetic: a few MB of random disk.

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func push(t *testing.T, ref string, dirs ...string) oci.PushResult {
	t.Helper()
	res, err := oci.Push(ctx(t), oci.PushOptions{Ref: ref, Bundles: dirs, Version: "test"})
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return res
}

// sameFiles checks that every file of the bundle src is in dst, byte for
// byte.
func sameFiles(t *testing.T, src, dst string) {
	t.Helper()
	for _, n := range []string{store.BundleManifest, store.BundleDisk, store.BundleKernel, store.BundleInitrd, store.BundleLog} {
		a, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dst, n))
		if err != nil {
			t.Fatalf("pulled bundle: %v", err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs after push and pull", n)
		}
	}
}

func disk(t *testing.T, dir string) string {
	t.Helper()
	m, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	return "sha256:" + m.Files[store.BundleDisk].SHA256
}

func TestPushPull(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	px := regtest.NewProxy(t, reg.Addr)
	src := regtest.Bundle(t, t.TempDir(), "demo", "amd64", 3<<20)
	ref := px.Addr + "/team/demo:1"

	res := push(t, ref, src)
	if res.Uploaded != 5 || res.Present != 0 {
		t.Errorf("first push: %d uploaded, %d present; want 5 and 0", res.Uploaded, res.Present)
	}
	// Again: the registry has every blob; none is sent.
	before := len(px.Requests())
	res = push(t, ref, src)
	if res.Uploaded != 0 || res.Present != 5 {
		t.Errorf("second push: %d uploaded, %d present; want 0 and 5", res.Uploaded, res.Present)
	}
	for _, r := range px.Requests()[before:] {
		if strings.Contains(r.Path, "/blobs/uploads/") {
			t.Errorf("second push sent a blob: %s %s", r.Method, r.Path)
		}
	}

	home := store.At(t.TempDir())
	rec := &event.Recorder{}
	pr, err := oci.Pull(ctx(t), oci.PullOptions{Options: oci.Options{Sink: rec}, Ref: ref, Arch: "amd64", Home: home})
	if err != nil {
		t.Fatal(err)
	}
	if pr.Dir != filepath.Join(home.Images(), "demo") || pr.UpToDate || pr.Reused != 0 {
		t.Errorf("pull result %+v", pr)
	}
	sameFiles(t, src, pr.Dir)
	o, err := oci.ReadOrigin(pr.Dir)
	if err != nil || o.Ref != ref || o.Digest == "" || o.Index != res.Digest {
		t.Errorf("origin %+v (%v); index pushed %s", o, err, res.Digest)
	}
	// An abandoned pull's blobs: pruned after a week, not before.
	blobs := filepath.Join(home.Blobs(), "sha256")
	old, young := filepath.Join(blobs, strings.Repeat("0", 64)+".partial"), filepath.Join(blobs, strings.Repeat("1", 64))
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	weekAgo := time.Now().Add(-oci.BlobsKept - time.Hour)
	if err := os.Chtimes(old, weekAgo, weekAgo); err != nil {
		t.Fatal(err)
	}
	if _, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: home}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(young); err != nil {
		t.Errorf("a recent blob was pruned: %v", err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a blob older than a week was kept: %v", err)
	}

	// Nothing is left in the blob directory, nor a staged bundle.
	left, _ := filepath.Glob(filepath.Join(home.Blobs(), "sha256", "*"))
	staged, _ := filepath.Glob(filepath.Join(home.Images(), ".*"))
	if len(left)+len(staged) > 0 {
		t.Errorf("left behind: %v %v", left, staged)
	}
	st := event.FoldAll(rec.Events())
	var names []string
	for _, it := range st.Stages {
		names = append(names, it.Name)
		if it.State != event.Succeeded {
			t.Errorf("stage %s is %s", it.Name, it.State)
		}
	}
	if want := "pull disk.tar.zst vmlinuz initrd.img provision.log"; strings.Join(names, " ") != want {
		t.Errorf("stages %q, want %q", strings.Join(names, " "), want)
	}

	// Pulled again: up to date, nothing downloaded.
	before = len(px.BlobGets(disk(t, src)))
	pr, err = oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: home})
	if err != nil || !pr.UpToDate {
		t.Errorf("second pull: up to date %v, %v", pr.UpToDate, err)
	}
	if n := len(px.BlobGets(disk(t, src))); n != before {
		t.Errorf("second pull fetched the disk again")
	}
}

func TestPullCorruptBlob(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	px := regtest.NewProxy(t, reg.Addr)
	src := regtest.Bundle(t, t.TempDir(), "demo", "amd64", 2<<20)
	ref := px.Addr + "/demo:bad"
	push(t, ref, src)
	px.Corrupt(disk(t, src))

	home := store.At(t.TempDir())
	_, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: home})
	var de *oci.DigestError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want a DigestError", err)
	}
	for _, want := range []string{"pull " + ref, "blob disk.tar.zst " + disk(t, src), "does not match its digest"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%s", want, err)
		}
	}
	// Nothing placed, nothing half-written kept.
	if _, err := os.Stat(filepath.Join(home.Images(), "demo")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bundle was placed: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(home.Blobs(), "sha256", "*"+strings.TrimPrefix(disk(t, src), "sha256:")+"*"))
	staged, _ := filepath.Glob(filepath.Join(home.Images(), ".*"))
	if len(left)+len(staged) > 0 {
		t.Errorf("left behind: %v %v", left, staged)
	}
}

// interruptedPull pushes a bundle through px and pulls it into a fresh
// store, cancelled (as a kill would end it) once the initrd, its third
// blob, is partly on disk: the proxy sends half of it and hangs.
func interruptedPull(t *testing.T, px *regtest.Proxy) (src, ref string, home store.Home, man bundle.Manifest) {
	t.Helper()
	src = regtest.Bundle(t, t.TempDir(), "demo", "amd64", 2<<20)
	// A big initrd, so that half of it is a real resume.
	rewriteFile(t, src, store.BundleInitrd, bytes.Repeat([]byte("initrd"), 200_000))
	ref = px.Addr + "/demo:resume"
	push(t, ref, src)
	man, _ = bundle.Read(src)
	px.Stall("sha256:" + man.Files[store.BundleInitrd].SHA256)
	home = store.At(t.TempDir())
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	kill := event.SinkFunc(func(e event.Event) {
		if e.Kind == event.StageProgress && e.Name == store.BundleInitrd && e.Fields[event.FieldDone] != "0" {
			cancel()
		}
	})
	_, err := oci.Pull(c, oci.PullOptions{Options: oci.Options{Sink: kill}, Ref: ref, Arch: "amd64", Home: home})
	var oe *oci.Error
	if !errors.Is(err, context.Canceled) || !errors.As(err, &oe) || !strings.Contains(oe.HintText(), "resumes") {
		t.Fatalf("interrupted pull: err = %v, want context.Canceled with a hint to run it again", err)
	}
	if _, err := os.Stat(filepath.Join(home.Images(), "demo")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an interrupted pull placed a bundle: %v", err)
	}
	return src, ref, home, man
}

// A pull killed while its third blob streams, then run again: the blobs it
// finished are not downloaded again, and the third resumes by Range where
// it stopped.
func TestPullResumes(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	px := regtest.NewProxy(t, reg.Addr)
	src, ref, home, man := interruptedPull(t, px)
	digest := func(n string) string { return "sha256:" + man.Files[n].SHA256 }

	pr, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: home})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, pr.Dir)
	for _, n := range []string{store.BundleDisk, store.BundleKernel} {
		if gets := px.BlobGets(digest(n)); len(gets) != 1 {
			t.Errorf("%s fetched %d times, want once: %+v", n, len(gets), gets)
		}
	}
	size := man.Files[store.BundleInitrd].Size
	gets := px.BlobGets(digest(store.BundleInitrd))
	if len(gets) != 2 || gets[0].Range != "" || !strings.HasPrefix(gets[1].Range, "bytes=") ||
		gets[1].Range == "bytes=0-" || !strings.HasSuffix(gets[1].Range, "-"+strconv.FormatInt(size-1, 10)) {
		t.Errorf("initrd requests %+v: want a whole GET, then one ranged to its end", gets)
	}
	if pr.Fetched >= size+man.Files[store.BundleLog].Size {
		t.Errorf("second pull fetched %d bytes: the initrd again in full", pr.Fetched)
	}
}

// A registry that refuses the range: the partial blob starts over, and
// the pull still succeeds.
func TestPullResumeRefused(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	px := regtest.NewProxy(t, reg.Addr)
	src, ref, home, man := interruptedPull(t, px)
	px.RefuseRanges()
	pr, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: home})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, pr.Dir)
	gets := px.BlobGets("sha256:" + man.Files[store.BundleInitrd].SHA256)
	if len(gets) != 3 || gets[1].Range == "" || gets[2].Range != "" {
		t.Errorf("initrd requests %+v: want whole (stalled), ranged (refused), whole", gets)
	}
}

func rewriteFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := bundle.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	sum, size, err := digestOf(data)
	if err != nil {
		t.Fatal(err)
	}
	m.Files[name] = bundle.FileRecord{SHA256: sum, Size: size}
	writeManifest(t, dir, m)
}

func TestTwoArchitectures(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	base := t.TempDir()
	amd := regtest.Bundle(t, filepath.Join(base, "amd64"), "demo", "amd64", 1<<20)
	arm := regtest.Bundle(t, filepath.Join(base, "arm64"), "demo", "arm64", 1<<20)
	ref := reg.Addr + "/demo:multi"
	push(t, ref, amd)
	res := push(t, ref, arm)
	if len(res.Artifacts) != 1 {
		t.Fatalf("artifacts %d", len(res.Artifacts))
	}
	for _, tc := range []struct{ arch, src string }{{"amd64", amd}, {"arm64", arm}} {
		home := store.At(t.TempDir())
		pr, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: tc.arch, Home: home})
		if err != nil {
			t.Fatalf("%s: %v", tc.arch, err)
		}
		if pr.Manifest.Arch != tc.arch {
			t.Errorf("pulled %s for %s", pr.Manifest.Arch, tc.arch)
		}
		sameFiles(t, tc.src, pr.Dir)
	}
	_, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "riscv64", Home: store.At(t.TempDir())})
	var pe *oci.PlatformError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "(it has: linux/amd64, linux/arm64)") {
		t.Errorf("err = %v, want the platforms listed", err)
	}
	// A new amd64 bundle replaces its entry; arm64 stays.
	amd2 := regtest.Bundle(t, filepath.Join(base, "amd64-2"), "demo", "amd64", 1<<20)
	push(t, ref, amd2)
	pr, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "arm64", Home: store.At(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, arm, pr.Dir)
	pr, err = oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: store.At(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, amd2, pr.Dir)

	// Another stack under the same tag is refused, not overwritten.
	other := regtest.Bundle(t, base, "other", "amd64", 1<<10)
	_, err = oci.Push(ctx(t), oci.PushOptions{Ref: ref, Bundles: []string{other}})
	if err == nil || !strings.Contains(err.Error(), `not "other"`) {
		t.Errorf("push of another stack: err = %v", err)
	}
}

func TestAuth(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{Auth: true})
	src := regtest.Bundle(t, t.TempDir(), "demo", "amd64", 1<<20)
	ref := reg.Addr + "/private/demo:1"

	_, err := oci.Push(ctx(t), oci.PushOptions{Ref: ref, Bundles: []string{src}})
	var oe *oci.Error
	if !errors.As(err, &oe) {
		t.Fatalf("push without credentials: err = %v, want an oci.Error", err)
	}
	if !strings.Contains(err.Error(), reg.Addr+" asks for credentials") || !strings.Contains(oe.HintText(), "docker login "+reg.Addr) {
		t.Errorf("push without credentials: %v (hint %q)", err, oe.HintText())
	}
	_, err = oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: store.At(t.TempDir())})
	if err == nil || !strings.Contains(err.Error(), "asks for credentials") {
		t.Errorf("pull without credentials: %v", err)
	}

	reg.DockerConfig(t, reg.Addr)
	push(t, ref, src)
	pr, err := oci.Pull(ctx(t), oci.PullOptions{Ref: ref, Arch: "amd64", Home: store.At(t.TempDir())})
	if err != nil {
		t.Fatalf("pull with config.json: %v", err)
	}
	sameFiles(t, src, pr.Dir)
}

func TestPlainHTTPOnlyOnLoopback(t *testing.T) {
	// A transport that must never be reached: the guard refuses first.
	tr := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Scheme == "http" {
			t.Errorf("plain HTTP request passed the guard: %s", r.URL)
		}
		return nil, errors.New("no TLS here")
	})
	_, err := oci.Pull(ctx(t), oci.PullOptions{Options: oci.Options{Transport: tr}, Ref: "10.1.2.3:5000/demo:1", Home: store.At(t.TempDir())})
	// https is tried first and fails against the fake; the plain HTTP
	// fallback go-containerregistry tries for a private address must be
	// refused by the guard.
	if err == nil || !strings.Contains(err.Error(), "plain HTTP to 10.1.2.3:5000 refused") {
		t.Errorf("err = %v, want plain HTTP refused", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func digestOf(b []byte) (string, int64, error) {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), int64(len(b)), nil
}

func writeManifest(t *testing.T, dir string, m bundle.Manifest) {
	t.Helper()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.BundleManifest), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A registry that stops sending mid-blob: the pull fails after the idle
// bound, saying so, instead of hanging; what it got is kept for a resume.
func TestPullStalledRegistry(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	px := regtest.NewProxy(t, reg.Addr)
	src := regtest.Bundle(t, t.TempDir(), "demo", "amd64", 2<<20)
	ref := px.Addr + "/demo:stall"
	push(t, ref, src)
	px.Stall(disk(t, src))
	home := store.At(t.TempDir())
	start := time.Now()
	_, err := oci.Pull(ctx(t), oci.PullOptions{Options: oci.Options{Idle: 300 * time.Millisecond}, Ref: ref, Arch: "amd64", Home: home})
	if err == nil || !strings.Contains(err.Error(), "blob disk.tar.zst "+disk(t, src)+": download: the registry sent nothing for 300ms") {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the stalled pull took %s to fail", took)
	}
	partial := filepath.Join(home.Blobs(), "sha256", strings.TrimPrefix(disk(t, src), "sha256:")+".partial")
	if fi, err := os.Stat(partial); err != nil || fi.Size() == 0 {
		t.Errorf("partial blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(home.Images(), "demo")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a stalled pull placed a bundle: %v", err)
	}
}

// A registry that stops taking an upload: the push fails after the idle
// bound instead of hanging, and the tag is not moved.
func TestPushStalledRegistry(t *testing.T) {
	regtest.NoDockerConfig(t)
	reg := regtest.Start(t, regtest.Options{})
	px := regtest.NewProxy(t, reg.Addr)
	// Larger than the loopback's socket buffers, so the writes block.
	src := regtest.Bundle(t, t.TempDir(), "demo", "amd64", 32<<20)
	px.StallUploads()
	start := time.Now()
	_, err := oci.Push(ctx(t), oci.PushOptions{Options: oci.Options{Idle: 300 * time.Millisecond}, Ref: px.Addr + "/demo:stall", Bundles: []string{src}})
	if err == nil || !strings.Contains(err.Error(), "the registry sent nothing for 300ms") {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the stalled push took %s to fail", took)
	}
	_, err = oci.Pull(ctx(t), oci.PullOptions{Ref: reg.Addr + "/demo:stall", Arch: "amd64", Home: store.At(t.TempDir())})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("the tag of a failed push: %v", err)
	}
}
