package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/emu-dev/emu/internal/disk"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// entry is a regular file in a tar: where its bytes are.
type entry struct{ off, size int64 }

// tarIndex maps the names in a tar to their bytes, links resolved.
type tarIndex struct {
	f     *os.File
	files map[string]entry
	links map[string]string
}

// indexTar reads the headers of the tar in f, seeking over the contents.
func indexTar(ctx context.Context, f *os.File) (*tarIndex, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	head := make([]byte, 4)
	if _, err := f.ReadAt(head, 0); err == nil && bytes.HasPrefix(head, gzipMagic) {
		return nil, invalid("a gzip-compressed file; emu takes the plain tar `docker save` writes (gunzip it)")
	}
	ix := &tarIndex{f: f, files: map[string]entry{}, links: map[string]string{}}
	tr := tar.NewReader(f)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, invalid("truncated tar (%v)", err)
		}
		if err != nil {
			return nil, invalid("not a docker-archive tar or an OCI layout directory: %v", err)
		}
		name := path.Clean(hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeReg:
			// tar.Reader does not buffer: after Next, f is at the file's bytes.
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, err
			}
			if off+hdr.Size > fi.Size() {
				return nil, invalid("truncated tar: %s ends past the end of the file", name)
			}
			ix.files[name] = entry{off, hdr.Size}
		case tar.TypeSymlink:
			ix.links[name] = path.Join(path.Dir(name), hdr.Linkname)
		case tar.TypeLink:
			ix.links[name] = path.Clean(hdr.Linkname)
		}
	}
	if len(ix.files) == 0 {
		return nil, invalid("not a docker-archive tar or an OCI layout directory")
	}
	return ix, nil
}

// lookup returns the bytes of the file name, following up to 8 links.
func (ix *tarIndex) lookup(name string) (entry, bool) {
	name = path.Clean(name)
	for range 8 {
		if e, ok := ix.files[name]; ok {
			return e, true
		}
		target, ok := ix.links[name]
		if !ok {
			break
		}
		name = target
	}
	return entry{}, false
}

func (ix *tarIndex) read(name string, limit int64) ([]byte, error) {
	e, ok := ix.lookup(name)
	if !ok {
		return nil, invalid("%s: not in the archive", name)
	}
	if e.size > limit {
		return nil, invalid("%s: %d bytes, more than the %d a metadata file may have", name, e.size, limit)
	}
	b := make([]byte, e.size)
	if _, err := ix.f.ReadAt(b, e.off); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

// manifest is the manifest.json of a docker-archive.
type manifest []descriptor

type descriptor struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// metaLimit bounds manifests and configs, which are read into memory.
const metaLimit = 8 << 20

// digestName finds the config digest in its name in the tar: "<hex>.json"
// (docker before 25) or "blobs/sha256/<hex>".
var digestName = regexp.MustCompile(`(?:^|/)(?:sha256[:/])?([0-9a-f]{64})(?:\.json)?$`)

func loadArchive(ctx context.Context, path, arch string) (_ *source, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	ix, err := indexTar(ctx, f)
	if err != nil {
		return nil, err
	}
	b, err := ix.read("manifest.json", metaLimit)
	if err != nil {
		if _, ok := ix.lookup("index.json"); ok {
			return nil, invalid("an OCI archive, not a docker-archive: unpack it into a directory, or use `docker save`")
		}
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, invalid("manifest.json: %v", err)
	}
	if len(m) == 0 {
		return nil, invalid("manifest.json lists no images")
	}
	src := &source{close: f.Close}
	for _, d := range m {
		img, err := archiveImage(ix, path, arch, d)
		if err != nil {
			return nil, err
		}
		src.imgs = append(src.imgs, img)
	}
	return src, nil
}

func archiveImage(ix *tarIndex, path, arch string, d descriptor) (*found, error) {
	refs := make([]string, 0, len(d.RepoTags))
	for _, t := range d.RepoTags {
		r, err := Normalize(t)
		if err != nil {
			return nil, invalid("manifest.json: RepoTags: %v", err)
		}
		refs = append(refs, r)
	}
	config, err := ix.read(d.Config, metaLimit)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var want v1.Hash
	if m := digestName.FindStringSubmatch(d.Config); m != nil {
		want = v1.Hash{Algorithm: "sha256", Hex: m[1]}
	}
	img, cfg, err := newFound(path, DockerArchive, arch, config, want, refs)
	if err != nil {
		return nil, err
	}
	for _, name := range d.Layers {
		e, ok := ix.lookup(name)
		if !ok {
			return nil, invalid("layer %s: not in the archive", name)
		}
		l := layer{name: name, size: e.size, open: func() (io.ReadCloser, error) {
			return io.NopCloser(io.NewSectionReader(ix.f, e.off, e.size)), nil
		}}
		if err := img.addLayer(cfg, l); err != nil {
			return nil, err
		}
	}
	return img, img.complete(cfg)
}

// WriteDockerArchive writes imgs, all from sources read by Open, into one
// docker-archive tar at dst, named by their Refs (tags only: a digest
// reference cannot be a RepoTag), each config kept byte for byte so the IDs
// stay the same. Layers are stored as in the source (gzip'd from an OCI
// layout; podman and docker load both) and verified again as they are
// copied. The tar is the same for the same images. It is written under a
// temporary name beside dst and renamed into place: on error, dst is left
// as it was.
func WriteDockerArchive(ctx context.Context, dst string, imgs []Image) error {
	if len(imgs) == 0 {
		return fmt.Errorf("write %s: no images", dst)
	}
	srcs := map[[2]string]*source{}
	defer func() {
		for _, s := range srcs {
			s.close()
		}
	}()
	var founds []*found
	for _, want := range imgs {
		key := [2]string{want.Source, want.Arch}
		src, ok := srcs[key]
		if !ok {
			var err error
			if src, err = load(ctx, want.Source, want.Arch); err != nil {
				return fmt.Errorf("write %s: %w", dst, err)
			}
			srcs[key] = src
		}
		var img *found
		for _, i := range src.imgs {
			if i.ID == want.ID {
				img = i
			}
		}
		if img == nil {
			return fmt.Errorf("write %s: image %s: no image %s (changed since it was opened?): %w", dst, want.Source, want.ID, ErrInvalid)
		}
		cp := *img
		cp.Refs = want.Refs
		founds = append(founds, &cp)
	}
	return disk.WriteAtomic(dst, 0o600, func(w io.Writer) error { return writeFound(ctx, w, founds) })
}

// writeFound writes imgs as one docker-archive, named by their Refs.
func writeFound(ctx context.Context, w io.Writer, imgs []*found) error {
	tw := tar.NewWriter(w)
	written := map[string]bool{}
	var m manifest
	for _, img := range imgs {
		d := descriptor{Config: blobName(img.ID), RepoTags: tags(img.Refs)}
		if err := writeFile(tw, written, d.Config, int64(len(img.config)), func(w io.Writer) error {
			_, err := w.Write(img.config)
			return err
		}); err != nil {
			return err
		}
		for _, l := range img.layers {
			// A docker-archive's layers are named by diff ID: its blobs have
			// no digest of their own here.
			id := l.digest
			if id.Hex == "" {
				id = l.diffID
			}
			name := blobName(id.String())
			d.Layers = append(d.Layers, name)
			if err := writeFile(tw, written, name, l.size, func(w io.Writer) error {
				_, err := l.verify(ctx, w)
				return err
			}); err != nil {
				return fmt.Errorf("image %s: %w", img.Source, err)
			}
		}
		m = append(m, d)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := writeFile(tw, written, "manifest.json", int64(len(b)), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		return err
	}
	return tw.Close()
}

// writeFile writes one file to tw, once: blobs shared by images are
// written for the first only.
func writeFile(tw *tar.Writer, written map[string]bool, name string, size int64, write func(io.Writer) error) error {
	if written[name] {
		return nil
	}
	written[name] = true
	// No times, owners or random: the same images give the same tar.
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644}); err != nil {
		return err
	}
	return write(tw)
}

// blobName is where a blob goes in the tar, as docker 25 and later name it.
func blobName(digest string) string {
	return "blobs/sha256/" + digest[len("sha256:"):]
}

// tags keeps the refs that can be RepoTags.
func tags(refs []string) []string {
	var out []string
	for _, r := range refs {
		if !strings.Contains(r, "@") {
			out = append(out, r)
		}
	}
	return out
}
