// Package agent is the guest side of emu: it runs bake steps, starts and
// probes services, and streams events to the host over a virtio-serial port.
//
// It imports nothing from emu's host side (a test enforces it) and links no
// cgo, so the agent stays a small static binary.
package agent

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/emu-dev/emu/internal/proto"
)

// LoadConfig reads the agent's config; a missing file is an empty config
// (a guest with no services, as in the test initramfs).
func LoadConfig(path string) (proto.Config, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return proto.Config{}, nil
	}
	if err != nil {
		return proto.Config{}, fmt.Errorf("read agent config: %w", err)
	}
	var c proto.Config
	if err := json.Unmarshal(b, &c); err != nil {
		return proto.Config{}, fmt.Errorf("parse agent config %s: %w", path, err)
	}
	return c, nil
}
