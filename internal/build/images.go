package build

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/guest"
	"github.com/emu-dev/emu/internal/image"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
)

// imageSource is one images entry as the guest gets it: a docker-archive
// attached read-only while provisioning, never copied into the tree.
type imageSource struct {
	entry  string // as written in the stack file
	path   string // the tarball to attach: the source, or one written in the work directory (an OCI layout, a flattened image)
	serial string
	ids    []string
}

// imageSerial names the disk of images entry i (virtio-blk serials hold 20
// bytes).
func imageSerial(i int) string { return "emu-img-" + strconv.Itoa(i) }

// flattenMin is the shadowed size from which an image is flattened. Below
// it the bundle does not change measurably (bench/flatten: a one-layer image
// flattened came out the same; 22.6 MB shadowed cost 4.7 MB in the bundle).
const flattenMin = 1 << 20

// images reads and verifies every image source on the host, before
// anything boots, flattens the images that carry replaced or deleted files,
// and resolves each image the stack names to its ID.
func (b *builder) images(ctx context.Context) (stageResult, error) {
	s := b.opts.Stack
	var all []image.Image
	perSource := make([][]image.Image, len(s.Images))
	for i, entry := range s.Images {
		imgs, err := image.Open(ctx, s.ImagePath(entry), s.Base.Arch)
		if err != nil {
			be := &Error{Stage: "images", Err: fmt.Errorf("images[%d]: %w", i, err)}
			if errors.Is(err, image.ErrInvalid) {
				be.Hint = "images takes tarballs as `docker save` writes them, and OCI layout directories; re-save or rebuild the image"
			}
			return stageResult{}, be
		}
		perSource[i] = imgs
		all = append(all, imgs...)
	}
	ids, err := resolveImages(s, all)
	if err != nil {
		return stageResult{}, err
	}
	var size int64
	for i, entry := range s.Images {
		src := imageSource{entry: entry, path: s.ImagePath(entry), serial: imageSerial(i)}
		imgs, changed := perSource[i], perSource[i][0].Format == image.OCILayout
		for j, img := range imgs {
			rec := bundle.ImageRecord{Source: entry, ID: img.ID, Refs: img.Refs, Layers: img.Layers}
			flat, shadowed, err := b.maybeFlatten(ctx, i, j, img, all)
			if err != nil {
				return stageResult{}, err
			}
			rec.Shadowed = shadowed
			if flat.ID != img.ID {
				rec.ID, rec.Layers, rec.FlattenedFrom = flat.ID, flat.Layers, img.ID
				for ref, id := range ids {
					if id == img.ID {
						ids[ref] = flat.ID
					}
				}
				imgs[j], changed = flat, true
			}
			b.man.Images = append(b.man.Images, rec)
			src.ids = append(src.ids, imgs[j].ID)
			size += imgs[j].Size
		}
		switch {
		case len(imgs) == 1 && imgs[0].Source != src.path:
			src.path = imgs[0].Source // flattened: its own docker-archive
		case changed:
			// The engine loads docker-archives from a disk; a layout is a
			// directory, so it is written as one (same configs, same IDs).
			src.path = filepath.Join(b.work, "image-"+strconv.Itoa(i)+".tar")
			if err := image.WriteDockerArchive(ctx, src.path, imgs); err != nil {
				return stageResult{}, fmt.Errorf("images[%d]: %w", i, err)
			}
		}
		b.imageSources = append(b.imageSources, src)
	}
	b.imageIDs = ids
	return stageResult{Size: size, Facts: map[string]string{"images": strconv.Itoa(len(all))}}, nil
}

// maybeFlatten flattens img to one layer when its layers replace or delete
// at least flattenMin bytes of files and it shares no layer with another
// image (flattening would then store that layer twice). It returns img
// itself otherwise, and the shadowed bytes either way. A failure to flatten
// keeps the image as it is: the flattened copy is a new file in the work
// directory; the source and the engine are never changed in place.
func (b *builder) maybeFlatten(ctx context.Context, i, j int, img image.Image, all []image.Image) (image.Image, int64, error) {
	entry := b.opts.Stack.Images[i]
	say := func(format string, args ...any) {
		b.emit(event.New(event.Log, "images", entry+": "+fmt.Sprintf(format, args...)))
	}
	say("%s %v (%s, %d layers)", shortHex(img.ID), img.Refs, img.Format, img.Layers)
	if img.Layers < 2 || b.opts.NoFlatten {
		return img, 0, nil
	}
	shadowed := img.Shadowed
	switch {
	case shadowed < 0:
		say("not flattened: its layers' contents could not be listed (zstd)")
		return img, 0, nil
	case shadowed < flattenMin:
		return img, shadowed, nil
	}
	for _, other := range all {
		if other.ID != img.ID && sharesLayer(img, other) {
			say("%s of files replaced or deleted by later layers; not flattened: it shares layers with %s", mb(shadowed), shortHex(other.ID))
			return img, shadowed, nil
		}
	}
	dst := filepath.Join(b.work, fmt.Sprintf("image-%d-%d-flat.tar", i, j))
	flat, err := image.Flatten(ctx, img, dst)
	if err != nil {
		if ctx.Err() != nil {
			return img, 0, ctx.Err()
		}
		say("not flattened: %v", err)
		return img, shadowed, nil
	}
	say("%s of files replaced or deleted by later layers: flattened %d layers into one, %s", mb(shadowed), img.Layers, shortHex(flat.ID))
	return flat, shadowed, nil
}

func sharesLayer(a, b image.Image) bool {
	for _, d := range a.DiffIDs {
		if slices.Contains(b.DiffIDs, d) {
			return true
		}
	}
	return false
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// resolveImages maps every image reference of the stack to an image ID; a
// reference no image holds is an error at the field that names it.
func resolveImages(s *spec.Stack, all []image.Image) (map[string]string, error) {
	ids := map[string]string{}
	var errs []error
	for _, r := range s.ImageRefs() {
		img, err := image.Find(all, r.Ref)
		if err != nil {
			errs = append(errs, s.Errorf(r.Field, "%v", err))
			continue
		}
		ids[r.Ref] = img.ID
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ids, nil
}

func shortHex(id string) string {
	if len(id) > 19 {
		return id[7:19]
	}
	return id
}

// imageDrives are the read-only disks of the image sources.
func (b *builder) imageDrives() []qemu.Drive {
	var ds []qemu.Drive
	for _, src := range b.imageSources {
		ds = append(ds, qemu.Drive{Path: src.path, Format: "raw", ReadOnly: true, Serial: src.serial})
	}
	return ds
}

// imageRequests tell the agent which disk holds which images.
func (b *builder) imageRequests() []proto.Image {
	var reqs []proto.Image
	for _, src := range b.imageSources {
		reqs = append(reqs, proto.Image{Serial: src.serial, Source: src.entry, IDs: src.ids})
	}
	return reqs
}

// containerSteps rewrites container bake steps as the podman command that
// runs them; their env reaches the container through podman's environment.
func containerSteps(s *spec.Stack, ids map[string]string, steps []proto.Step) []proto.Step {
	for i, st := range s.Bake {
		if st.Container == "" {
			continue
		}
		steps[i].Run = guest.ContainerStep(st, ids[st.Container])
		steps[i].User, steps[i].Dir = "", ""
	}
	return steps
}

// hashTree writes a file's contents, or a directory's files with their
// relative paths, in a fixed order, to h.
func hashTree(h io.Writer, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fh := sha256.New()
		if _, err := io.Copy(fh, f); err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %x\n", filepath.ToSlash(rel), fh.Sum(nil))
		return nil
	})
}
