package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Annotations naming an image in an index. containerd, BuildKit and docker
// 25+ put the full name in the first and only the tag in the second.
const (
	nameAnnotation = "io.containerd.image.name"
	refAnnotation  = "org.opencontainers.image.ref.name"
)

func loadLayout(dir, arch string) (*source, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, invalid("a directory without an oci-layout file: not an OCI image layout")
		}
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, invalid("OCI layout without index.json")
		}
		return nil, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, invalid("index.json: %v", err)
	}
	src := &source{close: func() error { return nil }}
	var others []string
	for _, d := range idx.Manifests {
		refs, err := refsOf(d.Annotations)
		if err != nil {
			return nil, err
		}
		switch {
		case d.MediaType.IsIndex():
			if d, err = pickPlatform(dir, d, arch); err != nil {
				return nil, err
			}
		case !d.MediaType.IsImage():
			continue // not an image: a signature, an attestation, an artifact
		case d.Platform != nil && !matches(d.Platform, arch):
			// One platform of a multi-platform index.json.
			others = append(others, d.Platform.OS+"/"+d.Platform.Architecture)
			continue
		}
		img, err := layoutImage(dir, arch, d, refs)
		if err != nil {
			return nil, err
		}
		src.imgs = append(src.imgs, img)
	}
	if len(src.imgs) == 0 && len(others) > 0 {
		return nil, invalid("no linux/%s image, only %s", arch, strings.Join(others, ", "))
	}
	if len(src.imgs) == 0 {
		return nil, invalid("index.json lists no images")
	}
	return src, nil
}

// refsOf names an image from its index annotations. A ref.name that is
// only a tag ("latest") names no repository: such an image is unnamed.
func refsOf(ann map[string]string) ([]string, error) {
	ref := ann[nameAnnotation]
	if ref == "" && strings.ContainsAny(ann[refAnnotation], ":/@") {
		ref = ann[refAnnotation]
	}
	if ref == "" {
		return nil, nil
	}
	r, err := Normalize(ref)
	if err != nil {
		return nil, invalid("index.json: %v", err)
	}
	return []string{r}, nil
}

func matches(p *v1.Platform, arch string) bool {
	return p.OS == "linux" && p.Architecture == arch
}

// pickPlatform returns the linux/arch image of the multi-platform index d.
func pickPlatform(dir string, d v1.Descriptor, arch string) (v1.Descriptor, error) {
	b, err := readBlob(dir, d)
	if err != nil {
		return d, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return d, invalid("index %s: %v", d.Digest, err)
	}
	var platforms []string
	for _, m := range idx.Manifests {
		if !m.MediaType.IsImage() || m.Platform == nil {
			continue
		}
		if matches(m.Platform, arch) {
			return m, nil
		}
		if m.Platform.OS != "unknown" { // BuildKit's attestations
			platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		}
	}
	return d, invalid("index %s has no linux/%s image, only %s", d.Digest, arch, strings.Join(platforms, ", "))
}

func layoutImage(dir, arch string, d v1.Descriptor, refs []string) (*found, error) {
	b, err := readBlob(dir, d)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return nil, invalid("manifest %s: %v", d.Digest, err)
	}
	config, err := readBlob(dir, m.Config)
	if err != nil {
		return nil, err
	}
	img, cfg, err := newFound(dir, OCILayout, arch, config, m.Config.Digest, refs)
	if err != nil {
		return nil, err
	}
	for _, ld := range m.Layers {
		l := layer{name: ld.Digest.String(), digest: ld.Digest, size: ld.Size, open: func() (io.ReadCloser, error) {
			return openBlob(dir, ld.Digest)
		}}
		if err := img.addLayer(cfg, l); err != nil {
			return nil, err
		}
	}
	return img, img.complete(cfg)
}

// openBlob opens a blob of the layout in dir, a regular file.
func openBlob(dir string, h v1.Hash) (io.ReadCloser, error) {
	if h.Algorithm != "sha256" {
		return nil, invalid("not a sha256 digest")
	}
	f, err := os.Open(filepath.Join(dir, "blobs", h.Algorithm, h.Hex))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, invalid("missing from the layout")
	}
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, invalid("not a regular file")
	}
	return f, nil
}

// readBlob reads a small blob (a manifest, an index, a config) and checks
// it against its descriptor.
func readBlob(dir string, d v1.Descriptor) ([]byte, error) {
	if d.Size > metaLimit {
		return nil, invalid("blob %s: %d bytes, more than the %d a %s may have", d.Digest, d.Size, metaLimit, d.MediaType)
	}
	rc, err := openBlob(dir, d.Digest)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, metaLimit+1))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if int64(len(b)) != d.Size {
		return nil, invalid("blob %s: size %d, want %d", d.Digest, len(b), d.Size)
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(b)); got != d.Digest {
		return nil, invalid("blob %s: digest mismatch (got %s)", d.Digest, got)
	}
	return b, nil
}
