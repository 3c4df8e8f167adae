package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// FindPort returns the /dev node of the virtio-serial port called name. The
// name lives in /sys/class/virtio-ports/*/name; /dev/virtio-ports/NAME exists
// only under udev, so it is not relied on.
func FindPort(sysfs, name string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(sysfs, "class/virtio-ports/*/name"))
	if err != nil {
		return "", err
	}
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", filepath.Base(filepath.Dir(m))), nil
		}
	}
	return "", fmt.Errorf("find virtio port %q: %w", name, os.ErrNotExist)
}

// WaitPort waits for the port to appear, loading virtio_console once if it
// has not shown up. The kernel gives no event to wait on without udev, so
// this checks at a short interval until ctx ends.
func WaitPort(ctx context.Context, name string) (string, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	loaded := false
	for {
		dev, err := FindPort("/sys", name)
		if err == nil {
			if _, serr := os.Stat(dev); serr == nil {
				return dev, nil
			}
		}
		if !loaded {
			loaded = true
			// Best effort: udev or modules-load.d normally did this already.
			_ = exec.CommandContext(ctx, "modprobe", "virtio_console").Run()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for virtio port %q: %w", name, errors.Join(ctx.Err(), err))
		case <-tick.C:
		}
	}
}
