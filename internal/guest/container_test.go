package guest

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/spec"
)

const containersYAML = `name: shop
images: [app]
services:
  db:
    unit: postgresql.service
    health: {tcp: 5432}
  api:
    image: demo-api:latest
    command: [serve, --verbose]
    entrypoint: [/usr/local/bin/demo-api]
    volumes: ["uploads:/var/lib/api", "conf:/etc/api:ro"]
    env: {DATABASE_URL: "postgres://demo:demo@127.0.0.1:5432/demo?sslmode=disable", MOTD: "50% off $today"}
    user: "65534:65534"
    restart: always
    after: [db]
    ports: [{guest: 8080, host: 18080, name: http}]
    health: {http: {port: 8080, path: /health}}
  worker:
    run: [/usr/local/bin/worker]
    restart: "no"
    health: {tcp: 9000}
bake:
  - name: migrate
    container: demo-api
    run: [migrate]
    env: {TOKEN: s3cret}
    volumes: ["uploads:/var/lib/api"]
`

const apiID = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestRenderContainers(t *testing.T) {
	s := parse(t, containersYAML)
	files, err := Render(s, map[string]string{"demo-api:latest": apiID, "demo-api": apiID})
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	golden(t, "render-containers", listing(files))

	// A unit names its image by ID; without one, nothing is rendered.
	if _, err := Render(s, nil); err == nil || !strings.Contains(err.Error(), "no image ID for demo-api:latest") {
		t.Errorf("Render without image IDs: %v", err)
	}
}

func TestVolumes(t *testing.T) {
	if diff := cmp.Diff([]string{"conf", "uploads"}, Volumes(parse(t, containersYAML))); diff != "" {
		t.Errorf("Volumes (-want +got):\n%s", diff)
	}
}

func TestContainerStep(t *testing.T) {
	s := parse(t, containersYAML)
	got := ContainerStep(s.Bake[0], apiID)
	want := []string{"/usr/bin/podman", "--transient-store", "run", "--name=emu-bake-migrate", "--replace", "--rm", "--pull=never",
		"--network=host", "--log-driver=passthrough", "--env=TOKEN", "--volume=uploads:/var/lib/api",
		strings.TrimPrefix(apiID, "sha256:"), "migrate"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ContainerStep (-want +got):\n%s", diff)
	}
	// The secret's value is never on the command line.
	for _, a := range got {
		if strings.Contains(a, "s3cret") {
			t.Errorf("argument %q holds the step's secret", a)
		}
	}
	st := spec.Step{Name: "Seed.1", Container: "x", User: "app", Dir: "/srv"}
	got = ContainerStep(st, "sha256:ff")
	if diff := cmp.Diff([]string{"--user=app", "--workdir=/srv", "ff"}, got[len(got)-3:]); diff != "" {
		t.Errorf("ContainerStep with user and dir (-want +got):\n%s", diff)
	}
}
