package spec

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseContainers(t *testing.T) {
	const src = `name: demo
images: [bin/demo-api, ./bin]
services:
  api:
    image: demo-api:latest
    command: [serve]
    volumes: ["data:/var/lib/api", "conf:/etc/api:ro"]
    env: {ADDR: ":8080"}
    user: "65534:65534"
    restart: always
    ports: [{guest: 8080, host: 18080}]
    health: {http: {port: 8080, path: /health}}
bake:
  - name: migrate
    container: demo-api
    run: [migrate]
    volumes: ["data:/var/lib/api"]
    env: {TOKEN: secret}
`
	s, err := Parse([]byte(src), "testdata/good/emu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !s.UsesContainers() {
		t.Error("UsesContainers = false")
	}
	if got, want := s.Services["api"].Kind(), KindContainer; got != want {
		t.Errorf("Kind = %q, want %q", got, want)
	}
	want := []ImageRef{{"services.api.image", "demo-api:latest"}, {"bake[0].container", "demo-api"}}
	if diff := cmp.Diff(want, s.ImageRefs()); diff != "" {
		t.Errorf("ImageRefs (-want +got):\n%s", diff)
	}
	if got, want := s.ImagePath(s.Images[1]), filepath.Join(s.Dir, "bin"); got != want {
		t.Errorf("ImagePath = %q, want %q", got, want)
	}
	// An error found after loading still names the file and line.
	err = s.Errorf("services.api.image", "no image %s", "demo-api:latest")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "emu.yaml:5: services.api.image: no image demo-api:latest") {
		t.Errorf("Errorf = %v", err)
	}
}

func TestUsesContainers(t *testing.T) {
	s, err := Parse([]byte("name: demo\nservices: {a: {run: [/a], health: {tcp: 1}}}\n"), "emu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.UsesContainers() {
		t.Error("a stack without images or containers uses containers")
	}
}

func TestParseVolume(t *testing.T) {
	tests := []struct {
		in   string
		want Volume
		err  string
	}{
		{"data:/data", Volume{Name: "data", Path: "/data"}, ""},
		{"pg_data.1:/var/lib/pg:ro", Volume{Name: "pg_data.1", Path: "/var/lib/pg", ReadOnly: true}, ""},
		{"data:/data:rw", Volume{Name: "data", Path: "/data"}, ""},
		{"data", Volume{}, "want NAME:/path"},
		{"/host:/data", Volume{}, "invalid volume name"},
		{"./rel:/data", Volume{}, "invalid volume name"},
		{"data:/", Volume{}, "root"},
		{"data:/a/../b", Volume{}, "absolute and clean"},
		{"data:/a:ro:x", Volume{}, "want NAME:/path"},
		{"data:/a:Z", Volume{}, `option "Z"`},
	}
	for _, tt := range tests {
		got, err := ParseVolume(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseVolume(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseVolume(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}
