// Package regtest gives tests a real OCI registry: Debian's docker-registry
// (the CNCF distribution registry, 2.8) on 127.0.0.1 with a temporary
// storage directory and config, optionally behind htpasswd auth, and a
// proxy in front of it that counts, corrupts or stalls what it serves.
// It also makes small synthetic bundles.
package regtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// Binary is the registry Debian's docker-registry package installs.
const Binary = "docker-registry"

// Registry is a running registry.
type Registry struct {
	// Addr is host:port, to put in references: 127.0.0.1:PORT.
	Addr string
	// User and Password are the htpasswd credentials, when asked for.
	User, Password string
	dir            string
}

// Options configure Start.
type Options struct {
	// Auth puts the registry behind htpasswd basic auth.
	Auth bool
}

// Start starts a registry for t and stops it (and reaps it) when t ends.
// Without the binary t is skipped, or failed when CI is set: in CI the
// registry tests must never vanish silently.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	bin, err := exec.LookPath(Binary)
	if err != nil {
		msg := "registry test needs docker-registry (apt-get install docker-registry, or scripts/install-deps): " + err.Error()
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	r := &Registry{dir: dir}
	addr := freeAddr(t)
	r.Addr = addr
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "storage"), addr)
	if opts.Auth {
		r.User, r.Password = "emu", "s3cret-"+hex.EncodeToString(randBytes(t, 4))
		hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(r.User+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: emu-test\n    path: %s\n", htpasswd)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	serve(t, bin, cfgPath)
	return r
}

// serve runs the registry with the config at cfgPath until t ends, and
// returns once it listens: its log says so, so nothing polls.
func serve(t testing.TB, bin, cfgPath string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", cfgPath)
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	listening := make(chan struct{})
	logDone := make(chan struct{})
	var logMu sync.Mutex
	var logTail []string
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			logTail = append(logTail, line)
			if len(logTail) > 50 {
				logTail = logTail[1:]
			}
			logMu.Unlock()
			if strings.Contains(line, "listening on") {
				once.Do(func() { close(listening) })
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		<-logDone
	})
	select {
	case <-listening:
	case <-logDone:
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("docker-registry exited before listening:\n%s", strings.Join(logTail, "\n"))
	case <-time.After(30 * time.Second):
		t.Fatal("docker-registry did not listen within 30 s")
	}
}

// freeAddr returns a 127.0.0.1 address no one listens on now: never :5000,
// where the package's own service may run.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// DockerConfig writes a Docker config.json holding r's credentials into a
// new directory and points DOCKER_CONFIG at it for the rest of t; addr is
// the address the client uses (the registry's, or a proxy's).
func (r *Registry) DockerConfig(t testing.TB, addr string) {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password))
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{addr: map[string]string{"auth": auth}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

// NoDockerConfig points DOCKER_CONFIG at an empty directory for t, so no
// credentials of the machine's user leak into the test.
func NoDockerConfig(t testing.TB) {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
}

// Proxy sits in front of a registry and sees every request.
type Proxy struct {
	// Addr is host:port of the proxy, to put in references.
	Addr string

	mu           sync.Mutex
	requests     []Request
	refuseRanges bool
	stallUploads bool
	// closing ends every stall when the test ends: a handler that has
	// not read its request's body never learns that the client left.
	closing chan struct{}
	corrupt map[string]bool          // blob digest -> flip a byte
	stall   map[string]chan struct{} // blob digest -> closed once half is sent
}

// Request is one request the proxy passed on.
type Request struct {
	Method, Path, Range string
}

// NewProxy starts a proxy to the registry at addr, closed when t ends.
func NewProxy(t testing.TB, addr string) *Proxy {
	t.Helper()
	p := &Proxy{corrupt: map[string]bool{}, stall: map[string]chan struct{}{}, closing: make(chan struct{})}
	target := &url.URL{Scheme: "http", Host: addr}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = p.modify
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests = append(p.requests, Request{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range")})
		refuse := p.refuseRanges && r.Header.Get("Range") != ""
		stall := p.stallUploads && strings.Contains(r.URL.Path, "/blobs/uploads/") && (r.Method == http.MethodPatch || r.Method == http.MethodPut)
		p.mu.Unlock()
		if stall {
			select { // reads nothing, answers nothing
			case <-r.Context().Done():
			case <-p.closing:
			}
			return
		}
		if refuse {
			http.Error(w, "no ranges here", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(p.closing) }) // first: it unblocks what Close waits for
	p.Addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// Corrupt makes every later GET of the blob with digest serve one byte
// changed.
func (p *Proxy) Corrupt(digest string) {
	p.mu.Lock()
	p.corrupt[digest] = true
	p.mu.Unlock()
}

// Stall makes the next GET of the blob with digest send half its bytes and
// then hang until the client goes away; the channel is closed once the
// half is sent.
func (p *Proxy) Stall(digest string) <-chan struct{} {
	ch := make(chan struct{})
	p.mu.Lock()
	p.stall[digest] = ch
	p.mu.Unlock()
	return ch
}

// RefuseRanges makes the proxy answer every request with a Range header
// 416, as a registry that serves no ranges might.
func (p *Proxy) RefuseRanges() {
	p.mu.Lock()
	p.refuseRanges = true
	p.mu.Unlock()
}

// StallUploads makes the proxy take no byte of a blob's upload (PATCH or
// PUT with a body) and never answer it, until the client goes away.
func (p *Proxy) StallUploads() {
	p.mu.Lock()
	p.stallUploads = true
	p.mu.Unlock()
}

// Requests returns what the proxy has seen.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.requests...)
}

// BlobGets returns the GETs of the blob with digest.
func (p *Proxy) BlobGets(digest string) []Request {
	var out []Request
	for _, r := range p.Requests() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/blobs/"+digest) {
			out = append(out, r)
		}
	}
	return out
}

func (p *Proxy) modify(resp *http.Response) error {
	req := resp.Request
	if req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/sha256:") {
		return nil
	}
	digest := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
	p.mu.Lock()
	corrupt := p.corrupt[digest]
	stall, stalled := p.stall[digest]
	if stalled {
		delete(p.stall, digest)
	}
	p.mu.Unlock()
	switch {
	case corrupt:
		resp.Body = &flipReader{r: resp.Body, at: resp.ContentLength / 2}
	case stalled:
		resp.Body = &stallReader{r: resp.Body, left: resp.ContentLength / 2, half: stall, ctx: req.Context(), closing: p.closing}
	}
	return nil
}

// flipReader changes the byte at offset at.
type flipReader struct {
	r   io.ReadCloser
	off int64
	at  int64
}

func (f *flipReader) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if f.at >= f.off && f.at < f.off+int64(n) {
		b[f.at-f.off] ^= 0x01
	}
	f.off += int64(n)
	return n, err
}

func (f *flipReader) Close() error { return f.r.Close() }

// stallReader passes left bytes, then blocks until ctx ends.
type stallReader struct {
	r       io.ReadCloser
	left    int64
	half    chan struct{}
	ctx     context.Context
	closing chan struct{}
	once    sync.Once
}

func (s *stallReader) Read(b []byte) (int, error) {
	if s.left <= 0 {
		s.once.Do(func() { close(s.half) })
		select {
		case <-s.ctx.Done():
			return 0, s.ctx.Err()
		case <-s.closing:
			return 0, io.ErrUnexpectedEOF
		}
	}
	if int64(len(b)) > s.left {
		b = b[:s.left]
	}
	n, err := s.r.Read(b)
	s.left -= int64(n)
	return n, err
}

func (s *stallReader) Close() error { return s.r.Close() }

// PackedBundle is Bundle with a real packed disk (disk.Pack of a sparse raw
// disk of rawSize bytes with random data in its first MiB), which emu can
// unpack; it needs tar and zstd.
func PackedBundle(t testing.TB, dir, name, arch string, rawSize int64) string {
	t.Helper()
	b := Bundle(t, dir, name, arch, 1)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(randBytes(t, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(rawSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := disk.Pack(ctx, raw, filepath.Join(b, store.BundleDisk), disk.PackLevel); err != nil {
		t.Fatal(err)
	}
	m, err := bundle.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	sum, size, err := disk.Digest(filepath.Join(b, store.BundleDisk))
	if err != nil {
		t.Fatal(err)
	}
	m.Files[store.BundleDisk] = bundle.FileRecord{SHA256: sum, Size: size}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, store.BundleManifest), append(mj, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// Bundle writes a small synthetic bundle of stack name for arch into
// dir/name: a disk of diskSize random bytes, a kernel, an initrd, a
// provision log, and a manifest.json recording them, created at a fixed
// time. It returns the bundle's directory.
func Bundle(t testing.TB, dir, name, arch string, diskSize int) string {
	t.Helper()
	b := filepath.Join(dir, name)
	if err := os.MkdirAll(b, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		store.BundleDisk:   randBytes(t, diskSize),
		store.BundleKernel: []byte("kernel for " + arch + " " + hex.EncodeToString(randBytes(t, 8))),
		store.BundleInitrd: []byte("initrd for " + arch + " " + hex.EncodeToString(randBytes(t, 8))),
		store.BundleLog:    []byte(`{"t":"2026-12-01T12:00:00Z","kind":"done"}` + "\n"),
	}
	man := bundle.Manifest{
		Name: name, Arch: arch, InputHash: "input-" + arch, RootfsKey: "rootfs-" + arch,
		Created:    time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
		EmuVersion: "v0.0.0-test",
		Cmdline:    "root=/dev/vda emu.mode=run",
		VM:         spec.VM{CPUs: 1, Memory: 256 << 20, Disk: 1 << 30},
		Files:      map[string]bundle.FileRecord{},
	}
	for n, data := range files {
		if err := os.WriteFile(filepath.Join(b, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		man.Files[n] = bundle.FileRecord{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	}
	mj, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, store.BundleManifest), append(mj, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}
