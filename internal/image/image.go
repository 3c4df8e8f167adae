// Package image reads container images on the host, as docker-archive tars
// (what `docker save` writes) and OCI image layouts, verifies every byte of
// them, and writes them back out as one docker-archive for the guest's
// container engine to load.
//
// Reading everything here is the point: a truncated or corrupt tarball must
// fail on the host, with the file and the blob named, not minutes later in
// the guest.
package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Format of an image source.
type Format string

const (
	DockerArchive Format = "docker-archive" // a tar as `docker save` writes it
	OCILayout     Format = "oci-layout"     // a directory with oci-layout, index.json and blobs/
)

// ErrInvalid marks a source whose content is wrong: corrupt, truncated,
// incomplete or for another platform. I/O errors and a cancelled context
// are returned as they are.
var ErrInvalid = errors.New("invalid image")

// ErrNotFound is returned by Find when no image matches.
var ErrNotFound = errors.New("image not found")

// Image is one image found in a source.
type Image struct {
	Source string // the path as given to Open
	Format Format
	ID     string   // the config digest, "sha256:<hex>": the ID podman and docker give it
	Refs   []string // its names in the short Docker form: "demo-api:latest", "ghcr.io/x/y:1"

	OS, Arch string
	Layers   int
	// DiffIDs are the layers' content digests, from the config: two images
	// that share a layer share its diff ID.
	DiffIDs []string
	// Size is the sum of the layer blobs' sizes as stored in the source:
	// compressed in an OCI layout, usually uncompressed in a docker-archive.
	Size int64

	Entrypoint, Cmd []string

	// Shadowed is the bytes of files that a later layer replaces or
	// deletes: what the engine stores, in lower layers, that no container
	// sees, and what a one-layer copy (Flatten) would not have. -1 when a
	// layer's content could not be listed (zstd).
	Shadowed int64
}

// Open reads every image in the source at path, a docker-archive tar or an
// OCI layout directory (told apart by content), for the guest architecture
// arch ("amd64", "arm64"), and verifies all of it: manifests, configs and
// every layer, read in full.
func Open(ctx context.Context, path, arch string) ([]Image, error) {
	src, err := load(ctx, path, arch)
	if err != nil {
		return nil, err
	}
	defer src.close()
	imgs := make([]Image, 0, len(src.imgs))
	listed := map[string][]layerEntry{} // by layer: one read for images sharing it
	for _, img := range src.imgs {
		lists := make([][]layerEntry, len(img.layers))
		img.Shadowed = 0
		for i, l := range img.layers {
			es, ok := listed[l.name]
			if !ok {
				if es, err = l.verify(ctx, io.Discard); err != nil {
					return nil, fmt.Errorf("image %s: %w", path, err)
				}
				listed[l.name] = es
			}
			if es == nil {
				img.Shadowed = -1
			}
			lists[i] = es
		}
		if img.Shadowed == 0 {
			img.Shadowed = stack(lists).shadowed
		}
		imgs = append(imgs, img.Image)
	}
	return imgs, nil
}

// source is an opened image source, its blobs not read yet.
type source struct {
	imgs  []*found
	close func() error
}

// found is an image and what it takes to copy it.
type found struct {
	Image
	config []byte
	layers []layer
}

// layer is one layer blob of a source. A docker-archive gives no digest of
// the stored blob, only the diff ID of its uncompressed content.
type layer struct {
	name   string  // for errors: the digest, or the path in the tar
	digest v1.Hash // of the stored blob; zero when the source does not say
	size   int64   // of the stored blob
	diffID v1.Hash
	open   func() (io.ReadCloser, error)
}

// load opens the source at path and reads its manifests and configs.
func load(ctx context.Context, path, arch string) (*source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	var src *source
	if fi.IsDir() {
		src, err = loadLayout(path, arch)
	} else {
		src, err = loadArchive(ctx, path, arch)
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	src.imgs = merge(src.imgs)
	return src, nil
}

// merge folds images listed twice (under two names) into one.
func merge(imgs []*found) []*found {
	var out []*found
	for _, img := range imgs {
		i := slices.IndexFunc(out, func(o *found) bool { return o.ID == img.ID })
		if i < 0 {
			out = append(out, img)
			continue
		}
		for _, r := range img.Refs {
			if !slices.Contains(out[i].Refs, r) {
				out[i].Refs = append(out[i].Refs, r)
			}
		}
	}
	return out
}

// newFound checks config against its platform and digest and describes the
// image. want is the config's digest where the source names one.
func newFound(path string, f Format, arch string, config []byte, want v1.Hash, refs []string) (*found, v1.ConfigFile, error) {
	id, _, err := v1.SHA256(bytes.NewReader(config))
	if err != nil {
		return nil, v1.ConfigFile{}, err
	}
	if want.Hex != "" && id != want {
		return nil, v1.ConfigFile{}, invalid("config %s: digest mismatch (got %s)", want, id)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(config))
	if err != nil {
		return nil, v1.ConfigFile{}, invalid("config %s: %v", id, err)
	}
	if cfg.Architecture != "" && (cfg.OS != "linux" || cfg.Architecture != arch) {
		what := id.String()
		if len(refs) > 0 {
			what = refs[0] + " (" + shortID(what) + ")"
		}
		return nil, v1.ConfigFile{}, invalid("%s is for %s/%s, not linux/%s", what, cfg.OS, cfg.Architecture, arch)
	}
	return &found{
		Image: Image{
			Source:     path,
			Format:     f,
			ID:         id.String(),
			Refs:       refs,
			OS:         cfg.OS,
			Arch:       cfg.Architecture,
			Entrypoint: cfg.Config.Entrypoint,
			Cmd:        cfg.Config.Cmd,
		},
		config: config,
	}, *cfg, nil
}

// addLayer appends l to img, checking it against the config's diff IDs.
func (img *found) addLayer(cfg v1.ConfigFile, l layer) error {
	i := len(img.layers)
	if i >= len(cfg.RootFS.DiffIDs) {
		return invalid("image %s has more layers than its config's %d diff_ids", img.ID, len(cfg.RootFS.DiffIDs))
	}
	l.diffID = cfg.RootFS.DiffIDs[i]
	img.layers = append(img.layers, l)
	img.DiffIDs = append(img.DiffIDs, l.diffID.String())
	img.Layers++
	img.Size += l.size
	return nil
}

// complete checks that img has as many layers as its config says.
func (img *found) complete(cfg v1.ConfigFile) error {
	if n := len(cfg.RootFS.DiffIDs); img.Layers != n {
		return invalid("image %s has %d layers, its config %d diff_ids", img.ID, img.Layers, n)
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrInvalid)...)
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// verify reads the layer in full, copying it to w, and checks its size and
// digest and the diff ID of its content (uncompressed or gzip'd; a zstd
// layer's content is left to the guest). In the same read it lists the
// layer's entries; nil when its content could not be listed.
func (l layer) verify(ctx context.Context, w io.Writer) ([]layerEntry, error) {
	rc, err := l.open()
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.name, err)
	}
	defer rc.Close()

	raw := sha256.New()
	var n countWriter
	br := bufio.NewReaderSize(ctxReader{ctx, rc}, 1<<16)
	magic, _ := br.Peek(4)
	var r io.Reader = io.TeeReader(br, io.MultiWriter(raw, &n, w))
	scan := newTarScan()
	defer scan.finish()
	content := raw
	var bad error // in the content: reported after a wrong digest, its likely cause
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		content = sha256.New()
		bad = gunzip(io.MultiWriter(content, scan), r)
	case bytes.HasPrefix(magic, zstdMagic):
		content = nil
	default:
		r = io.TeeReader(r, scan)
	}
	if _, err := io.Copy(io.Discard, r); err != nil || ctx.Err() != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("layer %s: %w", l.name, err)
	}

	if l.digest.Hex != "" {
		if int64(n) != l.size {
			return nil, invalid("layer %s: size %d, want %d", l.name, n, l.size)
		}
		if got := sum(raw); got != l.digest.String() {
			return nil, invalid("layer %s: digest mismatch (got %s)", l.name, got)
		}
	}
	if bad != nil {
		return nil, invalid("layer %s: %v", l.name, bad)
	}
	if content == nil {
		return nil, nil
	}
	if got := sum(content); got != l.diffID.String() {
		return nil, invalid("layer %s: content does not match diff_id %s (got %s)", l.name, l.diffID, got)
	}
	return scan.finish(), nil
}

func gunzip(w io.Writer, r io.Reader) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("gunzip: %w", err)
	}
	if _, err := io.Copy(w, zr); err != nil {
		return fmt.Errorf("gunzip: %w", err)
	}
	return nil
}

func sum(h interface{ Sum([]byte) []byte }) string {
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// ctxReader stops a long read when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// Normalize returns ref in the short Docker form used by Refs
// ("demo-api:latest", "ghcr.io/x/y:1", "x@sha256:..."), or an error when
// ref is not a valid reference.
func Normalize(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	repo := r.Context()
	short := repo.RepositoryStr()
	if repo.RegistryStr() == name.DefaultRegistry {
		short = strings.TrimPrefix(short, "library/")
	} else {
		short = repo.RegistryStr() + "/" + short
	}
	if d, ok := r.(name.Digest); ok {
		return short + "@" + d.DigestStr(), nil
	}
	return short + ":" + r.Identifier(), nil
}

// Find returns the image whose ID or one of whose Refs matches ref: a name
// ("demo-api" means "demo-api:latest"), "sha256:<hex>", or a unique prefix
// of at least 12 hex digits of an ID.
func Find(imgs []Image, ref string) (Image, error) {
	if norm, err := Normalize(ref); err == nil {
		for _, img := range imgs {
			if slices.Contains(img.Refs, norm) {
				return img, nil
			}
		}
	}
	id := strings.TrimPrefix(ref, "sha256:")
	if len(id) >= 12 && isHex(id) {
		var match []Image
		for _, img := range imgs {
			if strings.HasPrefix(strings.TrimPrefix(img.ID, "sha256:"), id) {
				match = append(match, img)
			}
		}
		switch len(match) {
		case 1:
			return match[0], nil
		case 0:
		default:
			return Image{}, fmt.Errorf("image %q: matches %d image IDs: %w", ref, len(match), ErrNotFound)
		}
	}
	var names []string
	for _, img := range imgs {
		if len(img.Refs) == 0 {
			names = append(names, shortID(img.ID)+" (unnamed)")
		}
		names = append(names, img.Refs...)
	}
	if len(names) == 0 {
		return Image{}, fmt.Errorf("image %q: no images: %w", ref, ErrNotFound)
	}
	return Image{}, fmt.Errorf("image %q: not among %s: %w", ref, strings.Join(names, ", "), ErrNotFound)
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	return id[:min(12, len(id))]
}

func isHex(s string) bool {
	return strings.Trim(s, "0123456789abcdef") == ""
}
