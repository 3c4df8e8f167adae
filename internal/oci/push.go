package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/emu-dev/emu/internal/store"
)

// PushOptions says which bundles to push where.
type PushOptions struct {
	Options
	// Ref is the tag to push to: repository:tag.
	Ref string
	// Bundles are bundle directories, one per architecture.
	Bundles []string
	// Version is the pushing emu's, for bundles that do not record theirs.
	Version string
}

// PushResult is what a push left in the registry.
type PushResult struct {
	// Digest is the index's, which ref now names.
	Digest    string
	Artifacts []Artifact
	// Uploaded counts the blobs sent, Bytes their size; Present the blobs
	// the registry had already.
	Uploaded, Present int
	Bytes             int64
}

// Push uploads each bundle as an artifact and points ref at an index of
// them, merged with the index ref already names: a bundle replaces the
// entry of its platform, the other platforms stay. Blobs the registry has
// are not sent again. A ref that names anything but emu bundles of the
// same stack is refused, not overwritten.
func Push(ctx context.Context, opts PushOptions) (res PushResult, err error) {
	ref, err := opts.parseRef(opts.Ref)
	if err != nil {
		return res, err
	}
	tag, ok := ref.(name.Tag)
	if !ok {
		return res, &Error{Op: "push", Ref: opts.Ref, Err: errors.New("a digest cannot be pushed to"), Hint: "name a tag: REPOSITORY:TAG"}
	}
	reg := ref.Context().Registry
	defer func() { err = wrap("push", opts.Ref, reg, err) }()
	if len(opts.Bundles) == 0 {
		return res, errors.New("no bundle to push")
	}
	var arts []Artifact
	for _, dir := range opts.Bundles {
		a, err := readArtifact(dir, opts.Version)
		if err != nil {
			return res, err
		}
		arts = append(arts, a)
	}
	ro := opts.remote(ctx)
	base, err := currentIndex(ref, ro)
	if err != nil {
		return res, err
	}
	idx, err := MergeIndex(base, arts...)
	if err != nil {
		return res, fmt.Errorf("%w; push to another tag", err)
	}

	tr := newTransfer(opts.Options, "push")
	defer func() { tr.finish(err) }()
	for _, a := range arts {
		for _, l := range a.Manifest.Layers {
			tr.plan(l.Size)
		}
		tr.plan(a.Manifest.Config.Size)
	}
	res.Artifacts = arts
	for i, a := range arts {
		label := ""
		if len(arts) > 1 {
			label = a.Bundle.Arch + "/"
		}
		if err := uploadArtifact(ctx, ref.Context(), a, opts.Bundles[i], label, tr, opts.idle(), ro, &res); err != nil {
			return res, err
		}
	}
	raw, err := marshalIndex(idx)
	if err != nil {
		return res, err
	}
	if err := remote.Put(tag, rawManifest{raw, types.OCIImageIndex}, ro...); err != nil {
		return res, fmt.Errorf("put index: %w", err)
	}
	d, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return res, err
	}
	res.Digest = d.String()
	return res, nil
}

// uploadArtifact uploads the blobs of a, the bundle in dir, that the
// registry lacks, then puts its manifest by digest. label prefixes the
// blobs' stage names.
func uploadArtifact(ctx context.Context, repo name.Repository, a Artifact, dir, label string, tr *transfer, idle time.Duration, ro []remote.Option, res *PushResult) error {
	blobs := append([]v1.Descriptor{a.Manifest.Config}, a.Manifest.Layers...)
	for _, d := range blobs {
		title := d.Annotations[AnnotationTitle]
		open := func() (io.ReadCloser, error) { return os.Open(filepath.Join(dir, title)) }
		if d.MediaType == ConfigMediaType {
			title = store.BundleManifest
			open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(a.Config)), nil }
		}
		bp := tr.blob(label+title, d.Size)
		l := &fileLayer{desc: d, open: open, progress: bp}
		if err := uploadBlob(ctx, repo, l, idle, ro); err != nil {
			bp.finish(d.Digest.String(), err)
			return fmt.Errorf("upload %s %s: %w", label+title, d.Digest, err)
		}
		if !l.opened.Load() {
			bp.reused(d.Digest.String(), "registry")
			res.Present++
			continue
		}
		bp.finish(d.Digest.String(), nil)
		res.Uploaded++
		res.Bytes += d.Size
	}
	if err := remote.Put(repo.Digest(a.Digest.String()), rawManifest{a.Raw, types.OCIManifestSchema1}, ro...); err != nil {
		return fmt.Errorf("put manifest %s (%s): %w", a.Digest, a.Bundle.Arch, err)
	}
	return nil
}

// uploadBlob uploads l unless the registry has it. A registry that takes
// nothing for idle (its socket full, its answer not coming) fails the
// upload instead of hanging the push.
func uploadBlob(ctx context.Context, repo name.Repository, l *fileLayer, idle time.Duration, ro []remote.Option) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := errStalled(idle)
	l.watchdog, l.idle = time.AfterFunc(idle, func() { cancel(stalled) }), idle
	defer l.watchdog.Stop()
	err := remote.WriteLayer(repo, l, append(ro, remote.WithContext(ctx))...)
	return stallCause(ctx, stalled, err)
}

// readArtifact reads the bundle in dir and checks that its files are the
// size its manifest records.
func readArtifact(dir, version string) (Artifact, error) {
	cfg, err := os.ReadFile(filepath.Join(dir, store.BundleManifest))
	if err != nil {
		return Artifact{}, fmt.Errorf("read bundle %s: %w", dir, err)
	}
	a, err := NewArtifact(cfg, version)
	if err != nil {
		return Artifact{}, fmt.Errorf("bundle %s: %w", dir, err)
	}
	for _, l := range a.Manifest.Layers {
		p := filepath.Join(dir, l.Annotations[AnnotationTitle])
		fi, err := os.Stat(p)
		if err != nil {
			return Artifact{}, fmt.Errorf("bundle %s: %w", dir, err)
		}
		if fi.Size() != l.Size {
			return Artifact{}, fmt.Errorf("bundle %s: %s is %d bytes, its manifest says %d: the bundle changed since it was built", dir, p, fi.Size(), l.Size)
		}
	}
	return a, nil
}

// currentIndex returns the index ref names now, nil when it names nothing.
// A single emu bundle manifest counts as an index of one.
func currentIndex(ref name.Reference, ro []remote.Option) (*v1.IndexManifest, error) {
	d, err := remote.Get(ref, ro...)
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read what the tag holds: %w", err)
	}
	switch {
	case d.MediaType.IsIndex():
		return v1.ParseIndexManifest(bytes.NewReader(d.Manifest))
	case d.MediaType == types.OCIManifestSchema1:
		m, err := v1.ParseManifest(bytes.NewReader(d.Manifest))
		if err != nil {
			return nil, err
		}
		if m.ArtifactType != ArtifactType {
			return nil, fmt.Errorf("the tag holds an OCI manifest that is not an emu bundle (artifact type %q); push to another tag", m.ArtifactType)
		}
		desc := d.Descriptor
		desc.ArtifactType = ArtifactType
		desc.Platform = &v1.Platform{OS: OS, Architecture: m.Annotations[AnnotationArch]}
		desc.Annotations = map[string]string{AnnotationStack: m.Annotations[AnnotationStack]}
		return &v1.IndexManifest{Manifests: []v1.Descriptor{desc}}, nil
	}
	return nil, fmt.Errorf("the tag holds a %s, not an emu bundle; push to another tag", d.MediaType)
}

func marshalIndex(idx v1.IndexManifest) ([]byte, error) { return json.Marshal(idx) }

// rawManifest is a manifest or index to put as it is.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// fileLayer is one bundle file as go-containerregistry uploads it; it
// notes whether the upload read it, and counts the bytes it sent.
type fileLayer struct {
	desc     v1.Descriptor
	open     func() (io.ReadCloser, error)
	progress io.Writer
	opened   atomic.Bool
	// watchdog is reset by every read of the file (the upload's pace).
	watchdog *time.Timer
	idle     time.Duration
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.desc.Digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.desc.Digest, nil }
func (l *fileLayer) Size() (int64, error)                 { return l.desc.Size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return l.desc.MediaType, nil }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return l.Compressed() }

func (l *fileLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.open()
	if err != nil {
		return nil, err
	}
	l.opened.Store(true)
	var r io.Reader = rc
	if l.watchdog != nil {
		r = &idleReader{r: rc, watchdog: l.watchdog, idle: l.idle}
	}
	return struct {
		io.Reader
		io.Closer
	}{io.TeeReader(r, l.progress), rc}, nil
}
