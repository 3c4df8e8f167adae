package agent

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// fakeEngine records calls; images holds the IDs a load of each device
// adds.
type fakeEngine struct {
	mu      sync.Mutex
	calls   []string
	loads   map[string][]string // device -> IDs it holds
	have    map[string]bool
	loadErr error
}

func (f *fakeEngine) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeEngine) Load(_ context.Context, path string) (string, error) {
	f.record("load " + path)
	if f.loadErr != nil {
		return "", f.loadErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range f.loads[path] {
		f.have[id] = true
	}
	return "Loaded image: demo-api:latest", nil
}

func (f *fakeEngine) Has(_ context.Context, id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.have[id]
}

func (f *fakeEngine) Prune(context.Context) (string, error) {
	f.record("prune")
	return "Total reclaimed space: 0B", nil
}

func (f *fakeEngine) CreateVolume(_ context.Context, name string) error {
	f.record("volume " + name)
	return nil
}

func (f *fakeEngine) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// sysBlock makes a fake /sys/block with one disk per serial.
func sysBlock(t *testing.T, serials map[string]string) string {
	dir := t.TempDir()
	for dev, serial := range serials {
		writeFile(t, filepath.Join(dir, dev, "serial"), serial)
	}
	writeFile(t, filepath.Join(dir, "vda", "size"), "8388608") // the root disk: no serial
	return dir
}

func TestProvisionLoadsImagesAndPrunes(t *testing.T) {
	eng := &fakeEngine{
		loads: map[string][]string{"/dev/vdb": {"sha256:aa"}, "/dev/vdc": {"sha256:bb", "sha256:cc"}},
		have:  map[string]bool{},
	}
	sys := &fakeSystem{}
	cfg := proto.Config{Stack: "demo", Services: []proto.Service{
		{Name: "api", Unit: "emu-api.service", Health: proto.Health{Exec: []string{"true"}}},
	}}
	h, events := provision(t, Options{
		Config:       cfg,
		System:       sys,
		Engine:       eng,
		SysBlock:     sysBlock(t, map[string]string{"vdb": "emu-img-0", "vdc": "emu-img-1"}),
		SlimDefaults: []string{},
	}, proto.Request{
		Services: []string{"api"},
		Images: []proto.Image{
			{Serial: "emu-img-0", Source: "images/api.tar", IDs: []string{"sha256:aa"}},
			{Serial: "emu-img-1", Source: "images/layout", IDs: []string{"sha256:bb", "sha256:cc"}},
		},
		Steps:   []proto.Step{sh("migrate", "exit 0", t.TempDir())},
		Prune:   true,
		Volumes: []string{"data", "uploads"},
	})
	if err := h.result(); err != nil {
		t.Fatalf("provision: %v\n%s", err, dump(events))
	}
	got := summary(events)
	// Images load before any service starts.
	want := []string{"hello demo", "stage.start load", "stage.done load", "stage.start services"}
	if diff := cmp.Diff(want, got[:len(want)]); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	var logs []string
	for _, e := range events {
		if e.Kind == event.Log {
			logs = append(logs, e.Name+": "+e.Msg)
		}
	}
	if diff := cmp.Diff([]string{"load /dev/vdb", "load /dev/vdc", "volume data", "volume uploads", "prune"}, eng.Calls()); diff != "" {
		t.Errorf("engine calls (-want +got):\n%s", diff)
	}
	// The prune comes after the services stopped: their containers are gone.
	if calls := sys.Calls(); calls[len(calls)-1] != "stop emu-api.service" {
		t.Errorf("init system calls %v: want the service stopped", calls)
	}
	wantLogs := []string{"load: images/api.tar: Loaded image: demo-api:latest",
		"load: images/layout: Loaded image: demo-api:latest", "slim: container storage: Total reclaimed space: 0B"}
	if diff := cmp.Diff(wantLogs, logs[:min(len(logs), len(wantLogs))]); diff != "" {
		t.Errorf("log events (-want +got):\n%s", diff)
	}
}

func TestProvisionImageFailures(t *testing.T) {
	tests := []struct {
		name    string
		engine  *fakeEngine
		serials map[string]string
		want    string
	}{
		{"no disk", &fakeEngine{have: map[string]bool{}}, nil,
			"load image images/api.tar: find disk emu-img-0: no disk with that serial"},
		{"load fails", &fakeEngine{have: map[string]bool{}, loadErr: errors.New("podman load: exit status 125: payload does not match")},
			map[string]string{"vdb": "emu-img-0"}, "load image images/api.tar from /dev/vdb: podman load: exit status 125: payload does not match"},
		{"image missing after load", &fakeEngine{have: map[string]bool{}, loads: map[string][]string{"/dev/vdb": {"sha256:other"}}},
			map[string]string{"vdb": "emu-img-0"}, "load image images/api.tar: image sha256:aa is not in the engine after the load"},
		{"no engine", nil, map[string]string{"vdb": "emu-img-0"}, "no container engine in this guest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{Config: proto.Config{Stack: "demo"}, SysBlock: sysBlock(t, tt.serials)}
			if tt.engine != nil {
				opts.Engine = tt.engine
			}
			h, events := provision(t, opts, proto.Request{
				Images: []proto.Image{{Serial: "emu-img-0", Source: "images/api.tar", IDs: []string{"sha256:aa"}}},
				Steps:  []proto.Step{sh("never", "exit 1", t.TempDir())},
			})
			err := h.result()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("provision error = %v, want %q\n%s", err, tt.want, dump(events))
			}
			last := events[len(events)-1]
			if last.Kind != event.Failed || last.Name != proto.LoadStage {
				t.Errorf("last event %s %s, want failed %s", last.Kind, last.Name, proto.LoadStage)
			}
			if _, ran := find(events, event.StepStart, "never"); ran {
				t.Error("a bake step ran after the images failed to load")
			}
		})
	}
}
