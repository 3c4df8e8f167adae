package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/golden"
	"github.com/emu-dev/emu/internal/store"
)

// manifestJSON is a bundle's manifest.json with fixed digests.
func manifestJSON(t *testing.T, name, arch string, withLog bool) []byte {
	t.Helper()
	hex := func(c string) string { return strings.Repeat(c, 64) }
	m := bundle.Manifest{
		Name: name, Arch: arch, InputHash: "input", RootfsKey: "rootfs",
		Created:    time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
		EmuVersion: "v1.2.3",
		Files: map[string]bundle.FileRecord{
			store.BundleDisk:   {SHA256: hex("d"), Size: 94_000_000},
			store.BundleKernel: {SHA256: hex("a"), Size: 8_000_000},
			store.BundleInitrd: {SHA256: hex("b"), Size: 20_000_000},
		},
	}
	if arch == "arm64" {
		m.Files[store.BundleDisk] = bundle.FileRecord{SHA256: hex("e"), Size: 96_000_000}
		m.Files[store.BundleKernel] = bundle.FileRecord{SHA256: hex("f"), Size: 9_000_000}
	}
	if withLog {
		m.Files[store.BundleLog] = bundle.FileRecord{SHA256: hex("c"), Size: 12_345}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func indent(t *testing.T, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	return append(b.Bytes(), '\n')
}

func artifact(t *testing.T, arch string) Artifact {
	t.Helper()
	a, err := NewArtifact(manifestJSON(t, "demo", arch, true), "v9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The manifest and the indexes are what every registry and client sees:
// golden files, written with -update.
func TestArtifactGolden(t *testing.T) {
	amd, arm := artifact(t, "amd64"), artifact(t, "arm64")
	golden.Check(t, "manifest-amd64.json", indent(t, amd.Raw))
	golden.Check(t, "manifest-arm64.json", indent(t, arm.Raw))

	one, err := MergeIndex(nil, amd)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(one)
	golden.Check(t, "index-one.json", indent(t, raw))

	// Two architectures pushed one after the other, or both at once, in
	// either order: the same index.
	two, err := MergeIndex(&one, arm)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = json.Marshal(two)
	golden.Check(t, "index-two.json", indent(t, raw))
	both, err := MergeIndex(nil, arm, amd)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(two, both); diff != "" {
		t.Errorf("index from both at once differs (-one by one +both):\n%s", diff)
	}
}

func TestArtifactDigestIsOfRaw(t *testing.T) {
	a := artifact(t, "amd64")
	d, _, err := v1.SHA256(bytes.NewReader(a.Raw))
	if err != nil {
		t.Fatal(err)
	}
	if d != a.Digest {
		t.Errorf("digest %s, raw hashes to %s", a.Digest, d)
	}
	c, _, _ := v1.SHA256(bytes.NewReader(a.Config))
	if a.Manifest.Config.Digest != c || a.Manifest.Config.MediaType != ConfigMediaType {
		t.Errorf("config descriptor %+v, want digest %s", a.Manifest.Config, c)
	}
	// The bundle records its emu version; the pushing one is not used.
	if v := a.Manifest.Annotations[AnnotationVersion]; v != "v1.2.3" {
		t.Errorf("version annotation %q", v)
	}
}

func TestArtifactWithoutLog(t *testing.T) {
	a, err := NewArtifact(manifestJSON(t, "demo", "amd64", false), "")
	if err != nil {
		t.Fatal(err)
	}
	var titles []string
	for _, l := range a.Manifest.Layers {
		titles = append(titles, l.Annotations[AnnotationTitle])
	}
	if want := []string{store.BundleDisk, store.BundleKernel, store.BundleInitrd}; !cmp.Equal(titles, want) {
		t.Errorf("layers %v, want %v", titles, want)
	}
}

func TestArtifactRejects(t *testing.T) {
	good := string(manifestJSON(t, "demo", "amd64", false))
	tests := []struct {
		name, json, want string
	}{
		{"not json", "{", "parse bundle manifest"},
		{"bad name", strings.Replace(good, `"name": "demo"`, `"name": "../etc"`, 1), `invalid stack name "../etc"`},
		{"no arch", strings.Replace(good, `"arch": "amd64"`, `"arch": ""`, 1), "names no arch"},
		{"no kernel", strings.Replace(good, `"vmlinuz"`, `"other"`, 1), "records no vmlinuz"},
		{"bad digest", strings.Replace(good, strings.Repeat("d", 64), "xyz", 1), `bad sha256 "xyz"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewArtifact([]byte(tt.json), "")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestMergeIndexRefuses(t *testing.T) {
	amd := artifact(t, "amd64")
	other, err := NewArtifact(manifestJSON(t, "other", "arm64", false), "")
	if err != nil {
		t.Fatal(err)
	}
	one, _ := MergeIndex(nil, amd)
	foreign := v1.IndexManifest{Manifests: []v1.Descriptor{{
		MediaType: "application/vnd.oci.image.manifest.v1+json", Platform: &v1.Platform{OS: "linux", Architecture: "amd64"},
	}}}
	tests := []struct {
		name string
		base *v1.IndexManifest
		arts []Artifact
		want string
	}{
		{"none", nil, nil, "no bundle"},
		{"two stacks at once", nil, []Artifact{amd, other}, `two stacks under one reference: "demo" and "other"`},
		{"same arch twice", nil, []Artifact{amd, amd}, "two bundles for linux/amd64"},
		{"other stack in index", &one, []Artifact{other}, `holds stack "demo" (amd64), not "other"`},
		{"container image in index", &foreign, []Artifact{amd}, "not an emu bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := MergeIndex(tt.base, tt.arts...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestChoose(t *testing.T) {
	two, err := MergeIndex(nil, artifact(t, "amd64"), artifact(t, "arm64"))
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		d, err := Choose("r", two, arch)
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		if d.Platform.Architecture != arch {
			t.Errorf("chose %s for %s", d.Platform.Architecture, arch)
		}
	}
	_, err = Choose("localhost:5000/demo:1", two, "riscv64")
	var pe *PlatformError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a PlatformError", err)
	}
	want := "no bundle for linux/riscv64 (it has: linux/amd64, linux/arm64)"
	if err.Error() != want {
		t.Errorf("error\n %s\nwant\n %s", err, want)
	}
	if !strings.Contains(pe.HintText(), "--arch amd64") {
		t.Errorf("hint %q", pe.HintText())
	}
	// An entry without a platform (an attestation, say) is never chosen.
	_, err = Choose("r", v1.IndexManifest{Manifests: []v1.Descriptor{{}}}, "amd64")
	if err == nil || !strings.Contains(err.Error(), "(it has: none)") {
		t.Errorf("err = %v", err)
	}
}

func TestLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "127.0.0.1": true, "127.8.9.1": true, "::1": true, "reg.localhost": true,
		"10.0.0.5": false, "192.168.1.2": false, "ghcr.io": false, "localhost.example.com": false,
	} {
		if got := loopback(host); got != want {
			t.Errorf("loopback(%q) = %v, want %v", host, got, want)
		}
	}
	for in, want := range map[string]string{"127.0.0.1:5000": "127.0.0.1", "[::1]:5000": "::1", "ghcr.io": "ghcr.io"} {
		if got := hostOf(in); got != want {
			t.Errorf("hostOf(%q) = %q, want %q", in, got, want)
		}
	}
}
