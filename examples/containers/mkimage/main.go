// Command mkimage packages a static Linux binary as a one-layer container
// image and writes it as a docker-archive tar, the way `docker save` would,
// with no container engine.
//
// The tar is reproducible: the same binary and flags give the same bytes
// (no clocks, no random, sorted entries), since its hash keys a build cache.
// Timestamps are SOURCE_DATE_EPOCH when set, else the Unix epoch.
//
//	mkimage -bin bin/demo-api -tag demo-api:latest -cmd serve -o images/api.tar
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/emu-dev/emu/internal/image"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mkimage:", err)
		}
		os.Exit(2)
	}
}

type options struct {
	bin, dst, tag, out, arch string
	cmd                      []string
	epoch                    time.Time
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var cmd string
	fs.StringVar(&o.bin, "bin", "", "the static Linux `binary` to package (required)")
	fs.StringVar(&o.dst, "dst", "", "its `path` in the image (default /usr/local/bin/<name of -bin>)")
	fs.StringVar(&o.tag, "tag", "demo-api:latest", "the image's `name`")
	fs.StringVar(&cmd, "cmd", "serve", "the image's Cmd, the arguments after the binary, split on spaces")
	fs.StringVar(&o.arch, "arch", "amd64", "the binary's `architecture`")
	fs.StringVar(&o.out, "o", "", "the docker-archive `tar` to write (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.bin == "" || o.out == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("need -bin and -o, and no arguments")
	}
	if o.dst == "" {
		o.dst = "/usr/local/bin/" + filepath.Base(o.bin)
	}
	if !path.IsAbs(o.dst) || path.Clean(o.dst) != o.dst {
		return fmt.Errorf("-dst %q: want a clean absolute path", o.dst)
	}
	o.cmd = strings.Fields(cmd)
	var err error
	if o.epoch, err = sourceDateEpoch(); err != nil {
		return err
	}
	return write(o)
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

// write builds the image and writes it to o.out under a temporary name,
// renamed into place once complete.
func write(o options) (err error) {
	ref, err := image.Normalize(o.tag)
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(o.bin)
	if err != nil {
		return err
	}
	layer, err := layerTar(o, bin)
	if err != nil {
		return err
	}
	layerID := digest(layer)
	config, err := json.Marshal(v1.ConfigFile{
		Architecture: o.arch,
		OS:           "linux",
		Created:      v1.Time{Time: o.epoch},
		Config: v1.Config{
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Entrypoint: []string{o.dst},
			Cmd:        o.cmd,
			User:       "65534:65534",
			WorkingDir: "/",
		},
		RootFS:  v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{layerID}},
		History: []v1.History{{Created: v1.Time{Time: o.epoch}, CreatedBy: "mkimage " + o.dst}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal([]descriptor{{
		Config:   blobName(digest(config)),
		RepoTags: []string{ref},
		Layers:   []string{blobName(layerID)},
	}})
	if err != nil {
		return err
	}

	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(o.out), "."+filepath.Base(o.out)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	tw := tar.NewWriter(f)
	for _, file := range []struct {
		name string
		b    []byte
	}{
		{blobName(layerID), layer},
		{blobName(digest(config)), config},
		{"manifest.json", manifest},
	} {
		if err := writeFile(tw, tar.Header{Name: file.name, Mode: 0o644, ModTime: o.epoch}, file.b); err != nil {
			return fmt.Errorf("write %s: %w", o.out, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write %s: %w", o.out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", o.out, err)
	}
	return os.Rename(f.Name(), o.out)
}

// layerTar is the image's one layer: the binary, its parent directories,
// /tmp, and the passwd and group files naming root and nobody.
func layerTar(o options, bin []byte) ([]byte, error) {
	files := map[string]tar.Header{
		"etc/": {Typeflag: tar.TypeDir, Mode: 0o755},
		"tmp/": {Typeflag: tar.TypeDir, Mode: 0o1777},
	}
	content := map[string][]byte{
		"etc/passwd": []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"),
		"etc/group":  []byte("root:x:0:\nnobody:x:65534:\n"),
		o.dst[1:]:    bin,
	}
	for name := range content {
		files[name] = tar.Header{Typeflag: tar.TypeReg, Mode: 0o644}
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			files[d+"/"] = tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}
		}
	}
	bh := files[o.dst[1:]]
	bh.Mode = 0o755
	files[o.dst[1:]] = bh

	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names) // a directory before what it holds
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		h := files[name]
		h.Name, h.ModTime = name, o.epoch
		if err := writeFile(tw, h, content[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeFile writes one entry owned by 0:0 with no names, times but mtime,
// or anything else that would vary from machine to machine.
func writeFile(tw *tar.Writer, h tar.Header, b []byte) error {
	if h.Typeflag == 0 {
		h.Typeflag = tar.TypeReg
	}
	h.Size = int64(len(b))
	h.Format = tar.FormatUSTAR
	if err := tw.WriteHeader(&h); err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	_, err := tw.Write(b)
	return err
}

// descriptor is one image in a docker-archive's manifest.json.
type descriptor struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func digest(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// blobName is where a blob goes in the tar, as docker 25 and later name it.
func blobName(h v1.Hash) string {
	return "blobs/sha256/" + h.Hex
}
