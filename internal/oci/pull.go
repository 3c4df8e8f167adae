package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/store"
)

// copyBuffer is the size of a download's reads and writes.
const copyBuffer = 1 << 20

// maxConfig bounds the config blob (manifest.json) read into memory.
const maxConfig = 16 << 20

// PullOptions says what to pull and where to put it.
type PullOptions struct {
	Options
	Ref string
	// Arch is the bundle's architecture to choose from an index (default:
	// the host's).
	Arch string
	Home store.Home
	// Name is the store name to place the bundle under (default: the
	// stack's name from the artifact).
	Name string
	// Lock takes the lock on the bundle directory final for the pull's
	// placing (build.LockOutput); nil takes none.
	Lock func(final string) (release func(), err error)
	// CanReplace is asked before a bundle of other contents under the same
	// name is replaced; an error refuses (an instance keeps data on it).
	CanReplace func(name string, old bundle.Manifest) error
}

// PullResult is what a pull placed.
type PullResult struct {
	Name     string
	Dir      string
	Manifest bundle.Manifest
	Origin   Origin
	// UpToDate: the store held this very bundle already; nothing moved.
	UpToDate bool
	// Fetched is the bytes downloaded; Reused the blobs found on disk.
	Fetched int64
	Reused  int
}

// Origin is a pulled bundle's origin.json.
type Origin struct {
	Ref    string    `json:"ref"`
	Digest string    `json:"digest"`          // the bundle's manifest
	Index  string    `json:"index,omitempty"` // the index it was chosen from
	Pulled time.Time `json:"pulled"`
}

// ReadOrigin reads a bundle directory's origin.json; a bundle built here
// has none (an error satisfying errors.Is(err, os.ErrNotExist)).
func ReadOrigin(dir string) (Origin, error) {
	var o Origin
	b, err := os.ReadFile(filepath.Join(dir, store.BundleOrigin))
	if err != nil {
		return o, err
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return o, fmt.Errorf("parse %s: %w", filepath.Join(dir, store.BundleOrigin), err)
	}
	return o, nil
}

// resolved is the bundle manifest a reference leads to.
type resolved struct {
	repo     name.Repository
	manifest v1.Manifest
	digest   v1.Hash
	index    string // the index's digest, when there was one
}

// Pull downloads the bundle ref names for opts.Arch into the image store
// and places it atomically. Every blob is verified against its digest as
// it streams; a blob whose bytes differ fails the pull naming it, and
// nothing is placed. Blobs already on disk are reused, and a download cut
// short resumes where it stopped.
func Pull(ctx context.Context, opts PullOptions) (res PullResult, err error) {
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	ref, err := opts.parseRef(opts.Ref)
	if err != nil {
		return res, err
	}
	reg := ref.Context().Registry
	defer func() { err = wrap("pull", opts.Ref, reg, err) }()
	tr := newTransfer(opts.Options, "pull")
	defer func() { tr.finish(err) }()

	r, err := resolve(ctx, opts, ref)
	if err != nil {
		return res, err
	}
	f, err := newFetcher(ctx, opts.Options, r.repo)
	if err != nil {
		return res, err
	}
	var cfg bytes.Buffer
	if r.manifest.Config.Size > maxConfig {
		return res, fmt.Errorf("config blob %s is %d bytes, more than a bundle manifest can be", r.manifest.Config.Digest, r.manifest.Config.Size)
	}
	if err := f.fetch(ctx, r.manifest.Config, &cfg, nil); err != nil {
		return res, fmt.Errorf("fetch %s: %w", store.BundleManifest, err)
	}
	man, err := checkArtifact(r.manifest, cfg.Bytes(), opts.Arch, opts.Ref)
	if err != nil {
		return res, err
	}
	res.Name = man.Name
	if opts.Name != "" {
		if err := checkName(opts.Name); err != nil {
			return res, err
		}
		res.Name = opts.Name
	}
	res.Manifest = man
	res.Dir = filepath.Join(opts.Home.Images(), res.Name)
	res.Origin = Origin{Ref: opts.Ref, Digest: r.digest.String(), Index: r.index, Pulled: time.Now().UTC().Truncate(time.Second)}

	if opts.Lock != nil {
		release, err := opts.Lock(res.Dir)
		if err != nil {
			return res, err
		}
		defer release()
	}
	if o, err := ReadOrigin(res.Dir); err == nil && o.Digest == res.Origin.Digest {
		if _, err := bundle.Read(res.Dir); err == nil {
			res.UpToDate = true
			return res, nil
		}
	}
	if old, err := bundle.Read(res.Dir); err == nil && opts.CanReplace != nil &&
		old.Files[store.BundleDisk].SHA256 != man.Files[store.BundleDisk].SHA256 {
		if err := opts.CanReplace(res.Name, old); err != nil {
			return res, err
		}
	}

	blobs := filepath.Join(opts.Home.Blobs(), "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return res, fmt.Errorf("create %s: %w", blobs, err)
	}
	for _, l := range r.manifest.Layers {
		tr.plan(l.Size)
	}
	paths := map[string]string{} // file name -> where its verified bytes are
	for _, l := range r.manifest.Layers {
		title := l.Annotations[AnnotationTitle]
		p, fetched, reused, err := ensureBlob(ctx, f, tr, opts.Home, blobs, title, l)
		if err != nil {
			return res, err
		}
		paths[title] = p
		res.Fetched += fetched
		if reused {
			res.Reused++
		}
	}
	if err := place(res.Dir, cfg.Bytes(), res.Origin, paths); err != nil {
		return res, err
	}
	for _, p := range paths {
		if strings.HasPrefix(p, blobs+string(filepath.Separator)) {
			os.Remove(p) // placed; the bundle holds it now
		}
	}
	return res, nil
}

// resolve fetches what ref names and, for an index, chooses opts.Arch's
// bundle from it.
func resolve(ctx context.Context, opts PullOptions, ref name.Reference) (resolved, error) {
	ro := opts.remote(ctx)
	d, err := remote.Get(ref, ro...)
	if err != nil {
		return resolved{}, err
	}
	r := resolved{repo: ref.Context()}
	raw, mt, dg := d.Manifest, d.MediaType, d.Digest
	if mt.IsIndex() {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return r, fmt.Errorf("parse index %s: %w", dg, err)
		}
		entry, err := Choose(opts.Ref, *idx, opts.Arch)
		if err != nil {
			return r, err
		}
		r.index = dg.String()
		// By digest: go-containerregistry checks the bytes against it.
		md, err := remote.Get(ref.Context().Digest(entry.Digest.String()), ro...)
		if err != nil {
			return r, err
		}
		raw, mt, dg = md.Manifest, md.MediaType, md.Digest
	}
	if mt != types.OCIManifestSchema1 {
		return r, fmt.Errorf("not an emu bundle: it is a %s", mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return r, fmt.Errorf("parse manifest %s: %w", dg, err)
	}
	r.manifest, r.digest = *m, dg
	return r, nil
}

// checkArtifact checks that m is an emu bundle for arch whose layers are
// the files its manifest.json (config) records, and returns that manifest.
func checkArtifact(m v1.Manifest, config []byte, arch, ref string) (bundle.Manifest, error) {
	var man bundle.Manifest
	if m.ArtifactType != ArtifactType && m.Config.MediaType != ConfigMediaType {
		return man, fmt.Errorf("not an emu bundle: artifact type %q, config %q", m.ArtifactType, m.Config.MediaType)
	}
	if err := json.Unmarshal(config, &man); err != nil {
		return man, fmt.Errorf("parse %s: %w", store.BundleManifest, err)
	}
	if err := checkName(man.Name); err != nil {
		return man, err
	}
	if man.Arch != arch {
		return man, &PlatformError{Ref: ref, Arch: arch, Platforms: []string{OS + "/" + man.Arch}}
	}
	seen := map[string]bool{}
	for _, l := range m.Layers {
		title := l.Annotations[AnnotationTitle]
		if _, ok := mediaTypeOf(title); !ok {
			return man, fmt.Errorf("layer %s is titled %q, not a bundle file", l.Digest, title)
		}
		if seen[title] {
			return man, fmt.Errorf("two layers titled %s", title)
		}
		seen[title] = true
		rec := man.Files[title]
		if l.Digest.Algorithm != "sha256" || l.Digest.Hex != rec.SHA256 || l.Size != rec.Size {
			return man, fmt.Errorf("layer %s (%s, %d bytes) is not the file %s records (sha256:%s, %d bytes)",
				title, l.Digest, l.Size, store.BundleManifest, rec.SHA256, rec.Size)
		}
	}
	for _, f := range layerFiles {
		if f.required && !seen[f.name] {
			return man, fmt.Errorf("the artifact has no %s layer", f.name)
		}
	}
	return man, nil
}

// ensureBlob returns the path of l's verified bytes: a finished blob of an
// earlier pull, a file of a bundle in the store that records the digest,
// or a fresh download into blobs.
func ensureBlob(ctx context.Context, f *fetcher, tr *transfer, home store.Home, blobs, title string, l v1.Descriptor) (path string, fetched int64, reused bool, err error) {
	bp := tr.blob(title, l.Size)
	dst := filepath.Join(blobs, l.Digest.Hex)
	if fi, err := os.Stat(dst); err == nil && fi.Size() == l.Size {
		bp.reused(l.Digest.String(), "local")
		return dst, 0, true, nil
	}
	if p := inStore(home, title, l); p != "" {
		bp.reused(l.Digest.String(), "local")
		return p, 0, true, nil
	}
	err = download(ctx, f, bp, dst, l)
	bp.finish(l.Digest.String(), err)
	if err != nil {
		return "", bp.n, false, fmt.Errorf("blob %s %s: %w", title, l.Digest, err)
	}
	return dst, bp.n, false, nil
}

// inStore finds l's bytes in a bundle already in the store, by the digest
// its manifest records for the file: a bundle was verified when placed.
func inStore(home store.Home, title string, l v1.Descriptor) string {
	entries, err := os.ReadDir(home.Images())
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(home.Images(), e.Name())
		man, err := bundle.Read(dir)
		if err != nil {
			continue
		}
		for fname, rec := range man.Files {
			if rec.SHA256 != l.Digest.Hex || rec.Size != l.Size {
				continue
			}
			p := filepath.Join(dir, fname)
			if fi, err := os.Stat(p); err == nil && fi.Size() == l.Size {
				return p
			}
		}
	}
	return ""
}

// download fetches l into dst through dst.partial, resuming what a pull
// cut short left there, hashing as it writes. Bytes that do not match the
// digest are removed: a resume could never mend them.
func download(ctx context.Context, f *fetcher, bp *blobProgress, dst string, l v1.Descriptor) error {
	partial := dst + ".partial"
	pf, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", partial, err)
	}
	defer pf.Close()
	h := sha256.New()
	have, err := io.Copy(h, pf)
	if err != nil {
		return fmt.Errorf("read %s: %w", partial, err)
	}
	if have > l.Size {
		if err := pf.Truncate(0); err != nil {
			return err
		}
		h.Reset()
		have = 0
	}
	bp.resume(have)
	w := &offsetWriter{f: pf, off: have, synced: have}
	ah := newAsyncHash(h)
	defer ah.Close()
	sum := func() string { return hex.EncodeToString(ah.Sum()) }
	if have < l.Size {
		restart := func() error {
			ah.Reset()
			w.off, w.synced = 0, 0
			return pf.Truncate(0)
		}
		if err := f.fetchFrom(ctx, l, have, io.MultiWriter(w, ah, bp), restart); err != nil {
			return err
		}
	}
	if w.off != l.Size {
		return fmt.Errorf("got %d bytes, want %d", w.off, l.Size)
	}
	if got := sum(); got != l.Digest.Hex {
		pf.Close()
		os.Remove(partial)
		return &DigestError{Digest: l.Digest.String(), Got: "sha256:" + got}
	}
	if err := pf.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", partial, err)
	}
	if err := os.Rename(partial, dst); err != nil {
		return fmt.Errorf("place blob %s: %w", dst, err)
	}
	return nil
}

// DigestError is a blob whose bytes do not match its digest.
type DigestError struct{ Digest, Got string }

func (e *DigestError) Error() string {
	return fmt.Sprintf("content does not match its digest %s (got %s): the registry or something between served other bytes", e.Digest, e.Got)
}

// offsetWriter writes to f from off on, and starts the writeback of every
// writebackEvery bytes as they come, so that the final fsync is short.
type offsetWriter struct {
	f      *os.File
	off    int64
	synced int64 // writeback started up to here
}

// writebackEvery is how many written bytes make the writeback start.
const writebackEvery = 16 << 20

func (w *offsetWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	if w.off-w.synced >= writebackEvery {
		startWriteback(w.f, w.synced, w.off-w.synced)
		w.synced = w.off
	}
	return n, err
}

// place writes the bundle into a staged directory beside final (links to
// the verified blobs, or copies where a link cannot be made), with its
// manifest and origin, and swaps it into place in one step.
func place(final string, config []byte, origin Origin, paths map[string]string) (err error) {
	parent := filepath.Dir(final)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	staged := filepath.Join(parent, "."+filepath.Base(final)+".tmp-"+strconv.Itoa(os.Getpid()))
	if err := os.RemoveAll(staged); err != nil {
		return fmt.Errorf("remove %s: %w", staged, err)
	}
	if err := os.Mkdir(staged, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", staged, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(staged)
		}
	}()
	for title, src := range paths {
		dst := filepath.Join(staged, title)
		if err := os.Link(src, dst); err != nil {
			if err := copyFile(src, dst); err != nil {
				return err
			}
		}
	}
	ob, err := json.MarshalIndent(origin, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(staged, store.BundleManifest), config, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", store.BundleManifest, err)
	}
	if err := os.WriteFile(filepath.Join(staged, store.BundleOrigin), append(ob, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", store.BundleOrigin, err)
	}
	names := []string{store.BundleManifest, store.BundleOrigin}
	for title := range paths {
		names = append(names, title)
	}
	for _, n := range names {
		if err := disk.SyncFile(filepath.Join(staged, n)); err != nil {
			return err
		}
	}
	return disk.SwapDir(staged, final)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// fetcher downloads blobs of one repository with go-containerregistry's
// authenticated transport, by Range when resuming.
type fetcher struct {
	client *http.Client
	repo   name.Repository
	scheme string // chosen at the first request: https, or http where allowed
	plain  bool   // http may be tried
}

func newFetcher(ctx context.Context, o Options, repo name.Repository) (*fetcher, error) {
	reg := repo.Registry
	auth, err := o.keychain().Resolve(reg)
	if err != nil {
		return nil, fmt.Errorf("find credentials for %s: %w", reg.RegistryStr(), err)
	}
	rt, err := transport.NewWithContext(ctx, reg, auth, o.transport(), []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	if o.UserAgent != "" {
		rt = transport.NewUserAgent(rt, o.UserAgent)
	}
	return &fetcher{
		client: &http.Client{Transport: rt},
		repo:   repo,
		scheme: "https",
		plain:  o.Insecure || loopback(hostOf(reg.RegistryStr())),
	}, nil
}

// hostOf is the host of a registry's host[:port].
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// fetch writes blob d to w, verified against its digest and size.
func (f *fetcher) fetch(ctx context.Context, d v1.Descriptor, w io.Writer, restart func() error) error {
	h := sha256.New()
	n := &countWriter{}
	if err := f.fetchFrom(ctx, d, 0, io.MultiWriter(w, h, n), restart); err != nil {
		return err
	}
	if n.n != d.Size {
		return fmt.Errorf("blob %s: got %d bytes, want %d", d.Digest, n.n, d.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Digest.Hex {
		return fmt.Errorf("blob %s: %w", d.Digest, &DigestError{Digest: d.Digest.String(), Got: "sha256:" + got})
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// fetchFrom GETs blob d from byte offset on and copies at most the rest of
// it to w. A registry that ignores the Range answers with the whole blob:
// restart is called first, to drop what w got before.
func (f *fetcher) fetchFrom(ctx context.Context, d v1.Descriptor, offset int64, w io.Writer, restart func() error) error {
	resp, err := f.get(ctx, d, offset)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0 && restart != nil {
		// A registry that refuses the range: the whole blob, then.
		resp.Body.Close()
		if err := restart(); err != nil {
			return err
		}
		offset = 0
		if resp, err = f.get(ctx, d, 0); err != nil {
			return err
		}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
	case resp.StatusCode == http.StatusOK:
		if offset > 0 {
			if restart == nil {
				return fmt.Errorf("the registry ignored the range request")
			}
			if err := restart(); err != nil {
				return err
			}
			offset = 0
		}
	default:
		return transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
	}
	// One byte more than expected shows a blob that is too long. Large
	// reads and writes: 32 KiB ones cost a third of a pull's time in
	// system calls (BenchmarkPushPull).
	if _, err := io.CopyBuffer(w, io.LimitReader(resp.Body, d.Size-offset+1), make([]byte, copyBuffer)); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	return nil
}

func (f *fetcher) get(ctx context.Context, d v1.Descriptor, offset int64) (*http.Response, error) {
	do := func(scheme string) (*http.Response, error) {
		u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", scheme, f.repo.RegistryStr(), f.repo.RepositoryStr(), d.Digest)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		if offset > 0 {
			// With its end: go-containerregistry's own registry does not
			// understand an open range ("bytes=N-").
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, d.Size-1))
		}
		return f.client.Do(req)
	}
	resp, err := do(f.scheme)
	if err != nil && f.scheme == "https" && f.plain && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		// No TLS on a registry where plain HTTP is allowed: keep to HTTP.
		if r2, err2 := do("http"); err2 == nil {
			f.scheme = "http"
			return r2, nil
		}
	}
	return resp, err
}
