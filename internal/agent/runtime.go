package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/emu-dev/emu/internal/proto"
)

// ReadRuntime reads the runtime config from fw_cfg under sysfs. No config
// (a build, a boot check) is an empty Runtime.
func ReadRuntime(ctx context.Context, sysfs string) (proto.Runtime, error) {
	path := filepath.Join(sysfs, "firmware/qemu_fw_cfg/by_name", proto.RuntimeFWCfg, "raw")
	if _, err := os.Stat(filepath.Join(sysfs, "firmware/qemu_fw_cfg")); err != nil {
		// Best effort: udev usually loaded it already.
		_ = exec.CommandContext(ctx, "modprobe", "qemu_fw_cfg").Run()
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return proto.Runtime{}, nil
	}
	if err != nil {
		return proto.Runtime{}, fmt.Errorf("read runtime config: %w", err)
	}
	var rt proto.Runtime
	if err := json.Unmarshal(b, &rt); err != nil {
		return proto.Runtime{}, fmt.Errorf("parse runtime config: %w", err)
	}
	return rt, nil
}

// WriteEnv writes rt's env files for the services: path for units, and
// container for podman.
func WriteEnv(rt proto.Runtime, path, container string) error {
	for p, data := range map[string]string{path: rt.EnvLines(), container: rt.ContainerEnvLines()} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// waitLink waits for a network interface to appear (udev loads virtio_net).
func waitLink(ctx context.Context, name string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("network interface %s did not appear: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}

// SetupRuntime reads the runtime config, writes the services' env file,
// and brings up the network when the host forwards ports.
func SetupRuntime(ctx context.Context) (proto.Runtime, error) {
	rt, err := ReadRuntime(ctx, "/sys")
	if err != nil {
		return rt, err
	}
	var errs []error
	if err := WriteEnv(rt, proto.EnvFile, proto.ContainerEnvFile); err != nil {
		errs = append(errs, err)
	}
	if len(rt.Ports) > 0 {
		if err := ConfigureNetwork(ctx, "eth0"); err != nil {
			errs = append(errs, err)
		}
	}
	return rt, errors.Join(errs...)
}

// ApplyRuntime writes rt's env files, as SetupRuntime does at boot, for a
// resume; it says whether they changed (the services reading them must
// restart then).
func ApplyRuntime(ctx context.Context, rt proto.Runtime) (bool, error) {
	return applyEnv(rt, proto.EnvFile, proto.ContainerEnvFile)
}

func applyEnv(rt proto.Runtime, path, container string) (bool, error) {
	old, _ := os.ReadFile(path)
	oldc, _ := os.ReadFile(container)
	if string(old) == rt.EnvLines() && string(oldc) == rt.ContainerEnvLines() {
		return false, nil
	}
	return true, WriteEnv(rt, path, container)
}
