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
	"time"
)

// Paths inside the guest.
const (
	ConfigPath = "/etc/emu/agent.json"
	BinaryPath = "/usr/local/sbin/emu-agent"
	UnitName   = "emu-agent.service"
	// PortName is the virtio-serial port's name (qemu.AgentPortName).
	PortName = "emu.agent"
)

// Config is the agent's view of the stack, rendered by the host at build
// time into ConfigPath. It holds no secrets: bake steps and their env come
// over the wire.
type Config struct {
	Stack    string    `json:"stack"`
	Services []Service `json:"services,omitempty"`
}

// Service is one service as the agent starts and probes it.
type Service struct {
	Name   string   `json:"name"`
	Unit   string   `json:"unit"`
	After  []string `json:"after,omitempty"`
	Health Health   `json:"health"`
	// Ports is informative: "name=guest" pairs reported with health events.
	Ports []string `json:"ports,omitempty"`
}

// Health is a service's health check; exactly one of TCP, HTTP, Exec.
type Health struct {
	TCP        int           `json:"tcp,omitempty"`
	HTTPPort   int           `json:"http_port,omitempty"`
	HTTPPath   string        `json:"http_path,omitempty"`
	HTTPStatus int           `json:"http_status,omitempty"`
	Exec       []string      `json:"exec,omitempty"`
	Timeout    time.Duration `json:"timeout"`
}

// LoadConfig reads the agent's config; a missing file is an empty config
// (a guest with no services, as in the test initramfs).
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return Config{}, nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("read agent config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("parse agent config %s: %w", path, err)
	}
	return c, nil
}
