package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// Engine is the guest's container engine, as the agent needs it.
type Engine interface {
	// Load loads the images of a docker-archive at path.
	Load(ctx context.Context, path string) (string, error)
	// Has reports whether an image with this ID is in the engine.
	Has(ctx context.Context, id string) bool
	// Prune removes stopped containers, dangling images and build cache;
	// never volumes. It returns what the engine says it reclaimed.
	Prune(ctx context.Context) (string, error)
	// CreateVolume creates a named volume unless it exists.
	CreateVolume(ctx context.Context, name string) error
}

// Podman drives podman; Bin defaults to PodmanPath.
type Podman struct{ Bin string }

func (p Podman) bin() string {
	if p.Bin == "" {
		return proto.PodmanPath
	}
	return p.Bin
}

func (p Podman) Load(ctx context.Context, path string) (string, error) {
	return output(ctx, p.bin(), "load", "--quiet", "--input", path)
}

func (p Podman) Has(ctx context.Context, id string) bool {
	return exec.CommandContext(ctx, p.bin(), "image", "exists", strings.TrimPrefix(id, "sha256:")).Run() == nil
}

func (p Podman) Prune(ctx context.Context) (string, error) {
	return output(ctx, p.bin(), "system", "prune", "--force", "--build")
}

func (p Podman) CreateVolume(ctx context.Context, name string) error {
	_, err := output(ctx, p.bin(), "volume", "create", "--ignore", name)
	return err
}

func output(ctx context.Context, name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	s := strings.TrimSpace(out.String())
	if err != nil {
		return s, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, lastLines(s, 20))
	}
	return s, nil
}

// loadImages loads every image source from its disk and checks that each
// image it should hold is there.
func (a *Agent) loadImages(ctx context.Context, imgs []proto.Image) error {
	if len(imgs) == 0 {
		return nil
	}
	if a.opts.Engine == nil {
		return fmt.Errorf("load images: no container engine in this guest (the base needs podman)")
	}
	a.emit(event.New(event.StageStart, proto.LoadStage, fmt.Sprintf("%d image sources", len(imgs))))
	start := time.Now()
	for _, img := range imgs {
		if err := a.loadImage(ctx, img); err != nil {
			a.emit(event.New(event.StageFailed, proto.LoadStage, err.Error()))
			return err
		}
	}
	a.emit(event.New(event.StageDone, proto.LoadStage, time.Since(start).Round(time.Millisecond).String()).
		With(proto.FieldSources, strconv.Itoa(len(imgs))))
	return nil
}

// createVolumes makes the stack's named volumes in the engine's own
// database before the bake. Container bake steps run on a throwaway
// database (podman --transient-store), which keeps their env out of the
// image; what they write into a volume lands in the volume made here.
func (a *Agent) createVolumes(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	if a.opts.Engine == nil {
		return fmt.Errorf("create volumes: no container engine in this guest (the base needs podman)")
	}
	for _, n := range names {
		if err := a.opts.Engine.CreateVolume(ctx, n); err != nil {
			return fmt.Errorf("create volume %s: %w", n, err)
		}
	}
	return nil
}

func (a *Agent) loadImage(ctx context.Context, img proto.Image) error {
	dev, err := findDisk(a.opts.SysBlock, img.Serial)
	if err != nil {
		return fmt.Errorf("load image %s: %w", img.Source, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	out, err := a.opts.Engine.Load(lctx, dev)
	if err != nil {
		return fmt.Errorf("load image %s from %s: %w", img.Source, dev, err)
	}
	a.emit(event.New(event.Log, proto.LoadStage, img.Source+": "+strings.ReplaceAll(out, "\n", "; ")))
	for _, id := range img.IDs {
		if !a.opts.Engine.Has(ctx, id) {
			return fmt.Errorf("load image %s: image %s is not in the engine after the load", img.Source, id)
		}
	}
	return nil
}

// findDisk returns the device of the virtio disk with this serial, by
// sysfs (no udev, so no /dev/disk/by-id).
func findDisk(sysBlock, serial string) (string, error) {
	if sysBlock == "" {
		sysBlock = "/sys/block"
	}
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", fmt.Errorf("find disk %s: %w", serial, err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "serial"))
		if err == nil && strings.TrimSpace(string(b)) == serial {
			return "/dev/" + e.Name(), nil
		}
	}
	return "", fmt.Errorf("find disk %s: no disk with that serial in %s", serial, sysBlock)
}

// prune tidies the engine's storage after the bake.
func (a *Agent) prune(ctx context.Context) error {
	if a.opts.Engine == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := a.opts.Engine.Prune(pctx)
	if err != nil {
		return fmt.Errorf("prune container storage: %w", err)
	}
	a.emit(event.New(event.Log, "slim", "container storage: "+lastLines(out, 1)))
	return nil
}
