// Command flatten rewrites a docker-archive image for bench/flatten/run,
// which measures whether a one-layer image makes a smaller bundle.
//
//	flatten flatten IN.tar OUT.tar   the image as one uncompressed layer
//	flatten shadow  IN.tar OUT.tar   the image plus two layers of shadowed
//	                                 and deleted files
//
// flatten keeps the config's Entrypoint, Cmd, Env, User, WorkingDir,
// ExposedPorts and Labels, the platform and the RepoTags; its layer is the
// image's filesystem as mutate.Extract gives it (whiteouts applied, shadowed
// files dropped), entries sorted, every time SOURCE_DATE_EPOCH (else 0).
//
// shadow models an image built without a multi-stage build. Over the image it
// adds
//
//	layer 2: /usr/local/bin/demo-api replaced by another build of the same
//	         size and compressibility (the original's bytes through a seeded
//	         byte permutation: nothing in it matches the original), and
//	         /var/cache/build/junk, 1 MiB of seeded random bytes;
//	layer 3: the whiteout /var/cache/build/.wh.junk, and
//	         /usr/local/bin/demo-api replaced by the original bytes with an
//	         8-byte trailer (still the working binary; a near-copy of
//	         layer 1's).
//
// Both are reproducible: the same input gives the same bytes. Every layer is
// written uncompressed, as `docker save` does.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/image"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The shadowed binary, and the deleted file's size.
const (
	binPath  = "usr/local/bin/demo-api"
	junkPath = "var/cache/build/junk"
	junkSize = 1 << 20
)

func main() {
	if len(os.Args) != 4 || (os.Args[1] != "flatten" && os.Args[1] != "shadow") {
		fmt.Fprintln(os.Stderr, "usage: flatten flatten|shadow IN.tar OUT.tar")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "flatten:", err)
		os.Exit(1)
	}
}

func run(cmd, in, out string) error {
	epoch, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	img, tags, err := load(in)
	if err != nil {
		return err
	}
	switch cmd {
	case "flatten":
		img, err = flatten(img, epoch)
	case "shadow":
		img, err = shadow(img, epoch)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		return err
	}
	return save(out, img, tags)
}

func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// load reads the one image in the docker-archive at p, and its RepoTags.
func load(p string) (v1.Image, []string, error) {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	if len(m) != 1 {
		return nil, nil, fmt.Errorf("%s: %d images, want 1", p, len(m))
	}
	img, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	return img, m[0].RepoTags, nil
}

// save writes img as a docker-archive named tags, to a temporary file renamed
// to p once complete. go-containerregistry writes the tags of one image in
// map order, so an image with several is written with its first tag, then
// rewritten by internal/image with all of them, in order: the same input
// gives the same bytes.
func save(p string, img v1.Image, tags []string) (err error) {
	if len(tags) == 0 {
		return errors.New("the image has no RepoTags")
	}
	if len(tags) > 1 {
		tmp := p + ".one-tag"
		defer os.Remove(tmp)
		if err := save(tmp, img, tags[:1]); err != nil {
			return err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return err
		}
		imgs, err := image.Open(context.Background(), tmp, cf.Architecture)
		if err != nil {
			return err
		}
		imgs[0].Refs = tags
		return image.WriteDockerArchive(context.Background(), p, imgs)
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		tag, err := name.NewTag(t)
		if err != nil {
			return fmt.Errorf("tag %q: %w", t, err)
		}
		refs[tag] = img
	}
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

// rawLayer is an uncompressed layer held in memory: its blob is its tar, so
// tarball.Write stores it as is (the tarball package's own layers are always
// gzip'd).
type rawLayer struct {
	b []byte
	h v1.Hash
}

func newRawLayer(b []byte) *rawLayer {
	sum := sha256.Sum256(b)
	return &rawLayer{b: b, h: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}
}

func (l *rawLayer) Digest() (v1.Hash, error)            { return l.h, nil }
func (l *rawLayer) DiffID() (v1.Hash, error)            { return l.h, nil }
func (l *rawLayer) Size() (int64, error)                { return int64(len(l.b)), nil }
func (l *rawLayer) MediaType() (types.MediaType, error) { return types.DockerUncompressedLayer, nil }
func (l *rawLayer) Compressed() (io.ReadCloser, error)  { return l.Uncompressed() }
func (l *rawLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.b)), nil
}

// file is one tar entry and its contents.
type file struct {
	h    tar.Header
	data []byte
}

// flatten returns img's filesystem as a one-layer image with its runtime
// config, platform, and nothing else of its history.
func flatten(img v1.Image, epoch time.Time) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	n, err := img.Layers()
	if err != nil {
		return nil, err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	var files []file
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("extract: %w", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("extract %s: %w", h.Name, err)
		}
		files = append(files, file{h: *h, data: data})
	}
	layer, err := layerTar(files, epoch)
	if err != nil {
		return nil, err
	}
	c := cf.Config
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: cf.Architecture,
		OS:           cf.OS,
		OSVersion:    cf.OSVersion,
		Variant:      cf.Variant,
		Created:      v1.Time{Time: epoch},
		Config: v1.Config{
			Entrypoint:   c.Entrypoint,
			Cmd:          c.Cmd,
			Env:          c.Env,
			User:         c.User,
			WorkingDir:   c.WorkingDir,
			ExposedPorts: c.ExposedPorts,
			Labels:       c.Labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	return mutate.Append(base, mutate.Addendum{
		Layer:   newRawLayer(layer),
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: fmt.Sprintf("flatten: %d layers", len(n))},
	})
}

// layerTar writes files as a reproducible tar: cleaned names, a directory
// before what it holds, every time epoch.
func layerTar(files []file, epoch time.Time) ([]byte, error) {
	for i := range files {
		h := &files[i].h
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if h.Typeflag == tar.TypeDir {
			name += "/"
		}
		h.Name = name
		h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
		h.Format = tar.FormatUnknown
		if h.PAXRecords != nil {
			// Keep xattrs and the like; drop the times tar wrote there.
			for k := range h.PAXRecords {
				if k == "atime" || k == "ctime" || k == "mtime" {
					delete(h.PAXRecords, k)
				}
			}
		}
	}
	slices.SortFunc(files, func(a, b file) int {
		return slices.Compare(strings.Split(strings.TrimSuffix(a.h.Name, "/"), "/"),
			strings.Split(strings.TrimSuffix(b.h.Name, "/"), "/"))
	})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := f.h
		if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		} else {
			h.Size = 0
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
		if h.Size > 0 {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// shadow returns img with its layers stored uncompressed and the two layers
// of shadowed and deleted files described in the package comment.
func shadow(img v1.Image, epoch time.Time) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	bin, err := readFile(img, binPath)
	if err != nil {
		return nil, err
	}

	// The same config and history, over uncompressed copies of the layers.
	base := cf.DeepCopy()
	base.RootFS.DiffIDs = nil
	history := base.History
	base.History = nil
	out, err := mutate.ConfigFile(empty.Image, base)
	if err != nil {
		return nil, err
	}
	var adds []mutate.Addendum
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		a := mutate.Addendum{Layer: newRawLayer(b)}
		if nonEmpty := nonEmptyHistory(history); i < len(nonEmpty) {
			a.History = nonEmpty[i]
		}
		adds = append(adds, a)
	}

	rng := rand.New(rand.NewChaCha8([32]byte{'e', 'm', 'u', '-', 'f', 'l', 'a', 't', 't', 'e', 'n'}))
	perm := rng.Perm(256)
	other := make([]byte, len(bin))
	for i, c := range bin {
		other[i] = byte(perm[c])
	}
	junk := make([]byte, junkSize)
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	dirs := func(names ...string) []file {
		var fs []file
		for _, n := range names {
			fs = append(fs, file{h: tar.Header{Name: n + "/", Typeflag: tar.TypeDir, Mode: 0o755}})
		}
		return fs
	}
	reg := func(n string, mode int64, b []byte) file {
		return file{h: tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: mode}, data: b}
	}
	l2, err := layerTar(append(dirs("usr", "usr/local", "usr/local/bin", "var", "var/cache", "var/cache/build"),
		reg(binPath, 0o755, other), reg(junkPath, 0o644, junk)), epoch)
	if err != nil {
		return nil, err
	}
	fixed := append(slices.Clip(bin), "\x00emu-v3\x00"...)
	l3, err := layerTar(append(dirs("usr", "usr/local", "usr/local/bin", "var", "var/cache", "var/cache/build"),
		reg(binPath, 0o755, fixed), reg(path.Join(path.Dir(junkPath), ".wh."+path.Base(junkPath)), 0o644, nil)), epoch)
	if err != nil {
		return nil, err
	}
	adds = append(adds,
		mutate.Addendum{Layer: newRawLayer(l2), History: v1.History{Created: v1.Time{Time: epoch},
			CreatedBy: "RUN go build -o /" + binPath + " && fill /" + junkPath}},
		mutate.Addendum{Layer: newRawLayer(l3), History: v1.History{Created: v1.Time{Time: epoch},
			CreatedBy: "RUN rebuild /" + binPath + " && rm /" + junkPath}})
	return mutate.Append(out, adds...)
}

// nonEmptyHistory is the history entries that made a layer, in order.
func nonEmptyHistory(h []v1.History) []v1.History {
	var out []v1.History
	for _, e := range h {
		if !e.EmptyLayer {
			out = append(out, e)
		}
	}
	return out
}

// readFile returns the contents of the file at p (no leading slash) in img's
// filesystem.
func readFile(img v1.Image, p string) ([]byte, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("no /%s in the image", p)
		}
		if err != nil {
			return nil, err
		}
		if path.Clean(strings.TrimPrefix(h.Name, "/")) == p && h.Typeflag == tar.TypeReg {
			return io.ReadAll(tr)
		}
	}
}
