// Package bundle is the image bundle's layout on disk: its manifest and the
// files it names.
package bundle

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/emu-dev/emu/internal/binopt"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// Manifest describes a bundle; it is written as manifest.json.
type Manifest struct {
	Name       string                `json:"name"`
	Arch       string                `json:"arch"`
	InputHash  string                `json:"input_hash"`
	RootfsKey  string                `json:"rootfs_key"`
	Created    time.Time             `json:"created"`
	EmuVersion string                `json:"emu_version,omitempty"`
	Cmdline    string                `json:"kernel_cmdline"`
	VM         spec.VM               `json:"vm"`
	Files      map[string]FileRecord `json:"files"`
	Stages     []StageRecord         `json:"stages"`
	Services   []ServiceRecord       `json:"services,omitempty"`
	// Binaries reports files[].optimize, one per file, in files[] order:
	// sizes, the file chosen and how it passed its verify in the guest.
	Binaries []binopt.Report `json:"binaries,omitempty"`
	// Images are the container images baked in, as the engine holds them.
	Images []ImageRecord `json:"images,omitempty"`
	// Connect are the stack file's connect templates when it was built;
	// an up from the stack file uses the file's own.
	Connect map[string]string `json:"connect,omitempty"`
}

// ImageRecord is one container image in the bundle.
type ImageRecord struct {
	Source string   `json:"source"` // the stack file's images entry
	ID     string   `json:"id"`
	Refs   []string `json:"refs,omitempty"`
	Layers int      `json:"layers"`
	// Shadowed is the bytes of files a later layer replaced or deleted;
	// FlattenedFrom the image's ID before it was flattened to one layer.
	Shadowed      int64  `json:"shadowed,omitempty"`
	FlattenedFrom string `json:"flattened_from,omitempty"`
}

// FileRecord is one bundle file.
type FileRecord struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// StageRecord is one stage's duration and the size of what it produced.
type StageRecord struct {
	Name     string `json:"name"`
	Duration Millis `json:"duration_ms"`
	Size     int64  `json:"size,omitempty"`
	Cached   bool   `json:"cached,omitempty"`
}

// Millis is a duration written in milliseconds.
type Millis time.Duration

// MarshalJSON writes whole milliseconds.
func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatInt(time.Duration(m).Milliseconds(), 10)), nil
}

// UnmarshalJSON reads milliseconds.
func (m *Millis) UnmarshalJSON(b []byte) error {
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return err
	}
	*m = Millis(time.Duration(n) * time.Millisecond)
	return nil
}

// ServiceRecord is a service as `emu up` needs it.
type ServiceRecord struct {
	Name   string      `json:"name"`
	Unit   string      `json:"unit"`
	After  []string    `json:"after,omitempty"`
	Ports  []spec.Port `json:"ports,omitempty"`
	Health spec.Health `json:"health"`
}

// Read loads dir's manifest.json.
func Read(dir string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(dir, store.BundleManifest))
	if err != nil {
		return m, fmt.Errorf("read bundle manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("parse bundle manifest %s: %w", filepath.Join(dir, store.BundleManifest), err)
	}
	return m, nil
}
