// Package oci distributes image bundles through OCI registries: a bundle is
// pushed as an OCI artifact (an image manifest whose config is the bundle's
// manifest.json and whose layers are its files), bundles of several
// architectures under one reference make an image index, and a pull
// verifies every blob against its digest as it streams and places the
// bundle atomically in the image store.
//
// It uses go-containerregistry for references, auth (Docker's config.json
// and credential helpers), the registry's token dance and uploads; blobs
// are downloaded with its authenticated transport and a Range request, so
// that an interrupted download resumes where it stopped.
package oci

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/store"
)

// Media types of an emu bundle.
const (
	// ArtifactType marks a manifest (and an index) as an emu bundle.
	ArtifactType = "application/vnd.emu.bundle.v1+json"
	// ConfigMediaType is the config blob: the bundle's manifest.json, as it is.
	ConfigMediaType = "application/vnd.emu.bundle.config.v1+json"

	DiskMediaType   = "application/vnd.emu.bundle.disk.v1.tar+zstd"
	KernelMediaType = "application/vnd.emu.bundle.kernel.v1"
	InitrdMediaType = "application/vnd.emu.bundle.initrd.v1"
	LogMediaType    = "application/vnd.emu.bundle.log.v1"
)

// Annotations.
const (
	// AnnotationTitle names a layer's file in the bundle (the key ORAS
	// uses, so `oras pull` writes the same files).
	AnnotationTitle   = "org.opencontainers.image.title"
	AnnotationCreated = "org.opencontainers.image.created"
	AnnotationStack   = "dev.emu.stack"
	AnnotationArch    = "dev.emu.arch"
	AnnotationVersion = "dev.emu.version"
)

// OS is the platform OS of every bundle: the guest is Linux.
const OS = "linux"

// layerFile is one bundle file as a layer.
type layerFile struct {
	name      string
	mediaType string
	required  bool
}

// layerFiles are the bundle files pushed, in layer order.
var layerFiles = []layerFile{
	{store.BundleDisk, DiskMediaType, true},
	{store.BundleKernel, KernelMediaType, true},
	{store.BundleInitrd, InitrdMediaType, true},
	{store.BundleLog, LogMediaType, false},
}

// mediaTypeOf returns the layer media type of the bundle file name, and
// whether name is one at all.
func mediaTypeOf(name string) (layerFile, bool) {
	i := slices.IndexFunc(layerFiles, func(f layerFile) bool { return f.name == name })
	if i < 0 {
		return layerFile{}, false
	}
	return layerFiles[i], true
}

// Artifact is one bundle as it is pushed: its manifest and the blobs it
// names.
type Artifact struct {
	Bundle   bundle.Manifest
	Config   []byte // manifest.json's bytes, the config blob
	Manifest v1.Manifest
	Raw      []byte // Manifest, encoded: what the registry stores
	Digest   v1.Hash
}

// NewArtifact builds the OCI manifest for a bundle from its manifest.json
// bytes. version is the emu that pushes it, used when the bundle does not
// say which emu built it. Only what the manifest records goes in: the
// same bundle always gives the same manifest and digest.
func NewArtifact(config []byte, version string) (Artifact, error) {
	var man bundle.Manifest
	if err := json.Unmarshal(config, &man); err != nil {
		return Artifact{}, fmt.Errorf("parse bundle manifest: %w", err)
	}
	if err := checkName(man.Name); err != nil {
		return Artifact{}, err
	}
	if man.Arch == "" {
		return Artifact{}, fmt.Errorf("bundle %s: manifest names no arch", man.Name)
	}
	cfgHash, cfgSize, err := v1.SHA256(strings.NewReader(string(config)))
	if err != nil {
		return Artifact{}, err
	}
	if version == "" || man.EmuVersion != "" {
		version = man.EmuVersion
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: ConfigMediaType, Digest: cfgHash, Size: cfgSize},
		Annotations: map[string]string{
			AnnotationStack: man.Name,
			AnnotationArch:  man.Arch,
		},
	}
	if version != "" {
		m.Annotations[AnnotationVersion] = version
	}
	if !man.Created.IsZero() {
		m.Annotations[AnnotationCreated] = man.Created.UTC().Format(time.RFC3339)
	}
	for _, f := range layerFiles {
		rec, ok := man.Files[f.name]
		if !ok {
			if f.required {
				return Artifact{}, fmt.Errorf("bundle %s: manifest records no %s", man.Name, f.name)
			}
			continue
		}
		h, err := v1.NewHash("sha256:" + rec.SHA256)
		if err != nil {
			return Artifact{}, fmt.Errorf("bundle %s: %s: bad sha256 %q: %w", man.Name, f.name, rec.SHA256, err)
		}
		m.Layers = append(m.Layers, v1.Descriptor{
			MediaType:   types.MediaType(f.mediaType),
			Digest:      h,
			Size:        rec.Size,
			Annotations: map[string]string{AnnotationTitle: f.name},
		})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return Artifact{}, err
	}
	d, _, err := v1.SHA256(strings.NewReader(string(raw)))
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Bundle: man, Config: config, Manifest: m, Raw: raw, Digest: d}, nil
}

// Descriptor is the artifact's entry in an index.
func (a Artifact) Descriptor() v1.Descriptor {
	return v1.Descriptor{
		MediaType:    types.OCIManifestSchema1,
		Digest:       a.Digest,
		Size:         int64(len(a.Raw)),
		Platform:     &v1.Platform{OS: OS, Architecture: a.Bundle.Arch},
		ArtifactType: ArtifactType,
		Annotations:  map[string]string{AnnotationStack: a.Bundle.Name},
	}
}

// MergeIndex returns the index for base (nil: none yet) with the artifacts'
// entries added, each replacing an entry of its platform; the entries are
// sorted by architecture, so the result does not depend on push order.
// Every entry base keeps must be an emu bundle of the same stack: a
// reference that holds anything else is not overwritten.
func MergeIndex(base *v1.IndexManifest, arts ...Artifact) (v1.IndexManifest, error) {
	if len(arts) == 0 {
		return v1.IndexManifest{}, fmt.Errorf("merge index: no bundle")
	}
	name := arts[0].Bundle.Name
	byArch := map[string]v1.Descriptor{}
	if base != nil {
		for _, d := range base.Manifests {
			if d.ArtifactType != ArtifactType || d.Platform == nil {
				return v1.IndexManifest{}, fmt.Errorf("the index holds %s, which is not an emu bundle", d.Digest)
			}
			if s := d.Annotations[AnnotationStack]; s != name {
				return v1.IndexManifest{}, fmt.Errorf("the index holds stack %q (%s), not %q", s, d.Platform.Architecture, name)
			}
			byArch[d.Platform.Architecture] = d
		}
	}
	seen := map[string]bool{}
	for _, a := range arts {
		if a.Bundle.Name != name {
			return v1.IndexManifest{}, fmt.Errorf("bundles of two stacks under one reference: %q and %q", name, a.Bundle.Name)
		}
		if seen[a.Bundle.Arch] {
			return v1.IndexManifest{}, fmt.Errorf("two bundles for %s/%s", OS, a.Bundle.Arch)
		}
		seen[a.Bundle.Arch] = true
		byArch[a.Bundle.Arch] = a.Descriptor()
	}
	idx := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		ArtifactType:  ArtifactType,
		Annotations:   map[string]string{AnnotationStack: name},
	}
	for _, d := range byArch {
		idx.Manifests = append(idx.Manifests, d)
	}
	sort.Slice(idx.Manifests, func(i, j int) bool {
		return idx.Manifests[i].Platform.Architecture < idx.Manifests[j].Platform.Architecture
	})
	return idx, nil
}

// PlatformError is a reference with no bundle for the architecture asked
// for; it lists those it has. The message leaves Ref to the error that
// wraps it ("pull REF: ...").
type PlatformError struct {
	Ref       string
	Arch      string
	Platforms []string // "linux/amd64", sorted
}

func (e *PlatformError) Error() string {
	have := "none"
	if len(e.Platforms) > 0 {
		have = strings.Join(e.Platforms, ", ")
	}
	return fmt.Sprintf("no bundle for %s/%s (it has: %s)", OS, e.Arch, have)
}

// HintText says how to pick another.
func (e *PlatformError) HintText() string {
	if len(e.Platforms) == 0 {
		return ""
	}
	return "choose one with --arch, e.g. --arch " + strings.TrimPrefix(e.Platforms[0], OS+"/")
}

// Choose returns idx's entry for arch (ref is for the error only). An
// entry without a platform is not a bundle and never chosen.
func Choose(ref string, idx v1.IndexManifest, arch string) (v1.Descriptor, error) {
	var have []string
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			continue
		}
		if d.Platform.OS == OS && d.Platform.Architecture == arch {
			return d, nil
		}
		have = append(have, d.Platform.OS+"/"+d.Platform.Architecture)
	}
	sort.Strings(have)
	return v1.Descriptor{}, &PlatformError{Ref: ref, Arch: arch, Platforms: have}
}

// checkName accepts a stack name as spec does: a lowercase DNS label. A
// name from a registry becomes a directory name in the store.
func checkName(name string) error {
	ok := name != "" && len(name) <= 63 && name[0] != '-' && name[len(name)-1] != '-'
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("invalid stack name %q: want a lowercase DNS label", name)
	}
	return nil
}
