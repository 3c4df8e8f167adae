package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/proto"
	"github.com/google/go-cmp/cmp"
)

func TestFindPort(t *testing.T) {
	sysfs := t.TempDir()
	ports := filepath.Join(sysfs, "class", "virtio-ports")
	writeFile(t, filepath.Join(ports, "vport0p0", "name"), "org.qemu.guest_agent.0\n")
	writeFile(t, filepath.Join(ports, "vport1p1", "name"), proto.PortName+"\n")
	writeFile(t, filepath.Join(ports, "vport1p2", "name"), "")
	// A name that cannot be read is skipped.
	if err := os.MkdirAll(filepath.Join(ports, "vport2p1", "name"), 0o755); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, port, want string
	}{
		{"agent port", proto.PortName, "/dev/vport1p1"},
		{"other port", "org.qemu.guest_agent.0", "/dev/vport0p0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FindPort(sysfs, tc.port)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("FindPort(%q) = %q, want %q", tc.port, got, tc.want)
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		_, err := FindPort(sysfs, "emu.nope")
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("FindPort(missing) = %v, want os.ErrNotExist", err)
		}
	})
	t.Run("no sysfs", func(t *testing.T) {
		_, err := FindPort(filepath.Join(sysfs, "nothing"), proto.PortName)
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("FindPort(empty tree) = %v, want os.ErrNotExist", err)
		}
	})
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "agent.json")
	writeFile(t, good, `{
  "stack": "demo",
  "services": [
    {"name": "db", "unit": "postgresql.service", "health": {"tcp": 5432, "timeout": 180000000000}},
    {"name": "api", "unit": "emu-api.service", "after": ["db"], "ports": ["http=8080"],
     "health": {"http_port": 8080, "http_path": "/health", "http_status": 200, "timeout": 120000000000}}
  ]
}`)
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, `{"stack": `)

	got, err := LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	want := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "db", Unit: "postgresql.service", Health: proto.Health{TCP: 5432, Timeout: 3 * time.Minute}},
		{Name: "api", Unit: "emu-api.service", After: []string{"db"}, Ports: []string{"http=8080"},
			Health: proto.Health{HTTPPort: 8080, HTTPPath: "/health", HTTPStatus: 200, Timeout: 2 * time.Minute}},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("LoadConfig (-want +got):\n%s", diff)
	}

	empty, err := LoadConfig(filepath.Join(dir, "missing.json"))
	if err != nil || !cmp.Equal(proto.Config{}, empty) {
		t.Errorf("LoadConfig(missing) = %+v, %v; want an empty config", empty, err)
	}

	if _, err := LoadConfig(bad); err == nil {
		t.Error("LoadConfig(malformed) succeeded")
	} else if !strings.HasPrefix(err.Error(), "parse agent config "+bad) {
		t.Errorf("LoadConfig(malformed) = %v, want it to name the file", err)
	}

	if _, err := LoadConfig(dir); err == nil {
		t.Error("LoadConfig(a directory) succeeded")
	}
}
