package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/emu-dev/emu/internal/disk"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Whiteouts, as layers mark what a lower layer had and this one removes.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// ErrNotFlattenable is returned by Flatten for an image it cannot rewrite
// as one layer (a zstd layer, a hard link to a file a later layer removed).
var ErrNotFlattenable = errors.New("cannot flatten")

// Flatten writes img as a docker-archive at dst holding one image: img's
// filesystem as one layer (whiteouts applied, replaced and deleted files
// dropped), and its config with that one layer, so a new ID; the same refs.
// It writes to temporary names beside dst and renames into place.
func Flatten(ctx context.Context, img Image, dst string) (Image, error) {
	src, f, err := reopen(ctx, img)
	if err != nil {
		return Image{}, err
	}
	defer src.close()
	m, err := survivors(ctx, f)
	if err != nil {
		return Image{}, err
	}
	layerTmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".layer*")
	if err != nil {
		return Image{}, fmt.Errorf("flatten %s: %w", img.ID, err)
	}
	defer func() {
		layerTmp.Close()
		os.Remove(layerTmp.Name())
	}()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(layerTmp, h), 1<<16)
	if err := m.write(ctx, f, bw); err != nil {
		return Image{}, fmt.Errorf("flatten %s: %w", img.ID, err)
	}
	if err := bw.Flush(); err != nil {
		return Image{}, fmt.Errorf("flatten %s: %w", img.ID, err)
	}
	size, err := layerTmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return Image{}, err
	}
	diffID := sum(h)
	config, err := flatConfig(f.config, diffID, img)
	if err != nil {
		return Image{}, fmt.Errorf("flatten %s: %w", img.ID, err)
	}
	id, _, err := v1.SHA256(bytes.NewReader(config))
	if err != nil {
		return Image{}, err
	}
	out := &found{Image: img, config: config, layers: []layer{{
		name: diffID, size: size,
		open: func() (io.ReadCloser, error) { return os.Open(layerTmp.Name()) },
	}}}
	out.ID, out.Source, out.Format = id.String(), dst, DockerArchive
	out.Layers, out.Size, out.DiffIDs, out.Shadowed = 1, size, []string{diffID}, 0
	if out.layers[0].diffID, err = v1.NewHash(diffID); err != nil {
		return Image{}, err
	}
	if err := disk.WriteAtomic(dst, 0o600, func(w io.Writer) error { return writeFound(ctx, w, []*found{out}) }); err != nil {
		return Image{}, err
	}
	return out.Image, nil
}

// reopen finds img again in its source.
func reopen(ctx context.Context, img Image) (*source, *found, error) {
	src, err := load(ctx, img.Source, img.Arch)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range src.imgs {
		if f.ID == img.ID {
			return src, f, nil
		}
	}
	src.close()
	return nil, nil, fmt.Errorf("image %s: no image %s (changed since it was opened?): %w", img.Source, img.ID, ErrInvalid)
}

// merged is an image's filesystem as its layers stack up: for each path,
// the layer whose entry is seen, and the bytes hidden below.
type merged struct {
	top      map[string]mergedEntry
	shadowed int64
}

type mergedEntry struct {
	layer int
	size  int64 // of a regular file
}

// layerEntry is what merging layers needs of one tar entry.
type layerEntry struct {
	name string // cleanName'd
	typ  byte
	size int64
}

func entryOf(hdr *tar.Header) layerEntry {
	return layerEntry{name: cleanName(hdr.Name), typ: hdr.Typeflag, size: hdr.Size}
}

// survivors reads img's layers' entries and stacks them.
func survivors(ctx context.Context, img *found) (*merged, error) {
	lists := make([][]layerEntry, len(img.layers))
	for i, l := range img.layers {
		lists[i] = []layerEntry{}
		if err := eachEntry(ctx, l, func(hdr *tar.Header, _ io.Reader) error {
			lists[i] = append(lists[i], entryOf(hdr))
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return stack(lists), nil
}

// stack applies the layers' entries in order: whiteouts and opaque
// directories delete what lies below, a path seen again hides the lower one.
func stack(layers [][]layerEntry) *merged {
	m := &merged{top: map[string]mergedEntry{}}
	for i, entries := range layers {
		for _, e := range entries {
			dir, base := path.Split(e.name)
			dir = strings.TrimSuffix(dir, "/")
			switch {
			case base == whiteoutOpaque:
				m.remove(dir, i, false)
			case strings.HasPrefix(base, whiteoutPrefix):
				m.remove(path.Join(dir, base[len(whiteoutPrefix):]), i, true)
			default:
				if old, ok := m.top[e.name]; ok && old.layer < i {
					m.shadowed += old.size // 0 for a directory
					if e.typ != tar.TypeDir {
						m.remove(e.name, i, false) // a directory replaced by a file
					}
				}
				me := mergedEntry{layer: i}
				if e.typ == tar.TypeReg {
					me.size = e.size
				}
				m.top[e.name] = me
			}
		}
	}
	return m
}

// tarScan lists the entries of a tar written to it, in a goroutine, as it
// streams past. finish returns them; nil when the stream was not a tar.
type tarScan struct {
	pw      *io.PipeWriter
	done    chan struct{}
	entries []layerEntry
	err     error
}

func newTarScan() *tarScan {
	pr, pw := io.Pipe()
	s := &tarScan{pw: pw, done: make(chan struct{}), entries: []layerEntry{}}
	go func() {
		defer close(s.done)
		tr := tar.NewReader(pr)
		for {
			hdr, err := tr.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					s.err = err
				}
				break
			}
			s.entries = append(s.entries, entryOf(hdr))
		}
		io.Copy(io.Discard, pr) // the writer must never block
	}()
	return s
}

// Write passes p to the scanner; it never fails, so the layer's own read
// goes on whatever the scanner finds.
func (s *tarScan) Write(p []byte) (int, error) {
	s.pw.Write(p)
	return len(p), nil
}

func (s *tarScan) finish() []layerEntry {
	s.pw.Close()
	<-s.done
	if s.err != nil {
		return nil
	}
	return s.entries
}

// remove drops what layers below layer hold at p, or only under p.
func (m *merged) remove(p string, layer int, self bool) {
	for name, e := range m.top {
		if e.layer >= layer {
			continue
		}
		if (self && name == p) || strings.HasPrefix(name, p+"/") || (p == "" && name != "") {
			m.shadowed += e.size
			delete(m.top, name)
		}
	}
}

// write streams the surviving entries, lowest layer first, as one tar.
func (m *merged) write(ctx context.Context, img *found, w io.Writer) error {
	tw := tar.NewWriter(w)
	for i, l := range img.layers {
		err := eachEntry(ctx, l, func(hdr *tar.Header, r io.Reader) error {
			name := cleanName(hdr.Name)
			if e, ok := m.top[name]; !ok || e.layer != i || strings.HasPrefix(path.Base(name), whiteoutPrefix) {
				return nil
			}
			if hdr.Typeflag == tar.TypeLink {
				if t, ok := m.top[cleanName(hdr.Linkname)]; !ok || t.layer != i {
					return fmt.Errorf("%s: a hard link to %s, which a later layer replaces: %w", name, hdr.Linkname, ErrNotFlattenable)
				}
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			_, err := io.Copy(tw, r)
			return err
		})
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// eachEntry calls fn for every entry of the layer's tar, uncompressed.
func eachEntry(ctx context.Context, l layer, fn func(*tar.Header, io.Reader) error) error {
	rc, err := l.open()
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.name, err)
	}
	defer rc.Close()
	br := bufio.NewReaderSize(ctxReader{ctx, rc}, 1<<16)
	var r io.Reader = br
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.name, err)
		}
		r = zr
	case bytes.HasPrefix(magic, zstdMagic):
		return fmt.Errorf("layer %s: zstd: %w", l.name, ErrNotFlattenable)
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.name, err)
		}
		if err := fn(hdr, tr); err != nil {
			return err
		}
	}
}

// cleanName is a layer entry's path without "./", "/" or a trailing "/".
func cleanName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

// flatConfig is config with one layer, diffID, and one history entry; every
// other field kept as it is.
func flatConfig(config []byte, diffID string, img Image) ([]byte, error) {
	var c map[string]json.RawMessage
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, err
	}
	rootfs, err := json.Marshal(map[string]any{"type": "layers", "diff_ids": []string{diffID}})
	if err != nil {
		return nil, err
	}
	c["rootfs"] = rootfs
	hist := map[string]any{"created_by": fmt.Sprintf("emu: %d layers of %s flattened into one", img.Layers, img.ID)}
	if created, ok := c["created"]; ok {
		hist["created"] = created
	}
	if c["history"], err = json.Marshal([]any{hist}); err != nil {
		return nil, err
	}
	return json.Marshal(c)
}
