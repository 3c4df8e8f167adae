package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/store"
)

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
	cfg, man, err := fetchConfig(ctx, f, r, opts)
	if err != nil {
		return res, err
	}
	blobs := filepath.Join(opts.Home.Blobs(), "sha256")
	pruneBlobs(blobs, r.manifest.Layers, time.Now())
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

	paths, err := fetchBlobs(ctx, f, tr, opts.Home, blobs, r.manifest.Layers, &res)
	if err != nil {
		return res, err
	}
	if err := place(res.Dir, cfg, res.Origin, paths); err != nil {
		return res, err
	}
	for _, p := range paths {
		if strings.HasPrefix(p, blobs+string(filepath.Separator)) {
			os.Remove(p) // placed; the bundle holds it now
		}
	}
	return res, nil
}

// fetchConfig fetches the artifact's config, its manifest.json, and
// checks the artifact against it.
func fetchConfig(ctx context.Context, f *fetcher, r resolved, opts PullOptions) ([]byte, bundle.Manifest, error) {
	var cfg bytes.Buffer
	if r.manifest.Config.Size > maxConfig {
		return nil, bundle.Manifest{}, fmt.Errorf("config blob %s is %d bytes, more than a bundle manifest can be", r.manifest.Config.Digest, r.manifest.Config.Size)
	}
	if err := f.fetch(ctx, r.manifest.Config, &cfg, nil); err != nil {
		return nil, bundle.Manifest{}, fmt.Errorf("fetch %s: %w", store.BundleManifest, err)
	}
	man, err := checkArtifact(r.manifest, cfg.Bytes(), opts.Arch, opts.Ref)
	return cfg.Bytes(), man, err
}

// fetchBlobs makes sure every layer's verified bytes are on disk, one
// after the other, and returns where, by file name. It counts what it
// fetched and reused in res.
func fetchBlobs(ctx context.Context, f *fetcher, tr *transfer, home store.Home, blobs string, layers []v1.Descriptor, res *PullResult) (map[string]string, error) {
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", blobs, err)
	}
	for _, l := range layers {
		tr.plan(l.Size)
	}
	paths := map[string]string{}
	for _, l := range layers {
		title := l.Annotations[AnnotationTitle]
		p, fetched, reused, err := ensureBlob(ctx, f, tr, home, blobs, title, l)
		res.Fetched += fetched
		if err != nil {
			return nil, err
		}
		paths[title] = p
		if reused {
			res.Reused++
		}
	}
	return paths, nil
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

// BlobsKept is how long a blob of an abandoned pull is kept for a pull of
// the same image to resume or reuse.
const BlobsKept = 7 * 24 * time.Hour

// pruneBlobs removes from blobs what an abandoned pull left there more
// than BlobsKept ago, but not what this pull (layers) wants. Housekeeping:
// a blob that cannot be removed stays.
func pruneBlobs(blobs string, layers []v1.Descriptor, now time.Time) {
	want := map[string]bool{}
	for _, l := range layers {
		want[l.Digest.Hex] = true
	}
	entries, err := os.ReadDir(blobs)
	if err != nil {
		return
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() || now.Sub(fi.ModTime()) < BlobsKept {
			continue
		}
		if want[strings.TrimSuffix(e.Name(), ".partial")] {
			continue
		}
		os.Remove(filepath.Join(blobs, e.Name()))
	}
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

// place writes the bundle into a staged directory beside final (links to
// the verified blobs, or copies where a link cannot be made), with its
// manifest and origin, and swaps it into place in one step.
func place(final string, config []byte, origin Origin, paths map[string]string) (err error) {
	parent := filepath.Dir(final)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	staged := filepath.Join(parent, "."+filepath.Base(final)+".tmp-"+strconv.Itoa(os.Getpid()))
	if err := os.RemoveAll(staged); err != nil {
		return fmt.Errorf("remove %s: %w", staged, err)
	}
	if err := os.Mkdir(staged, 0o700); err != nil {
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
	if err := os.WriteFile(filepath.Join(staged, store.BundleManifest), config, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", store.BundleManifest, err)
	}
	if err := os.WriteFile(filepath.Join(staged, store.BundleOrigin), append(ob, '\n'), 0o600); err != nil {
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
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}
