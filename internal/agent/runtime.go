package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// RuntimeFWCfg is the fw_cfg name of the runtime config `emu up` hands in.
// fw_cfg, not a config disk: QEMU passes a host file as is, nothing to
// build per start, and the guest reads it with no mount.
const RuntimeFWCfg = "opt/emu/runtime.json"

// EnvFile is where the runtime env lands for emu's service units
// (EnvironmentFile=-/run/emu/env).
const EnvFile = "/run/emu/env"

// ContainerEnvFile is the same env for container services, as podman's
// --env-file reads it: values literal, no quoting.
const ContainerEnvFile = "/run/emu/container.env"

// Runtime is the per-start config: the instance's name, the host ports
// its services are reachable on, and env overrides for the services.
type Runtime struct {
	Instance string            `json:"instance"`
	Env      map[string]string `json:"env,omitempty"`
	Ports    []RuntimePort     `json:"ports,omitempty"`
}

// RuntimePort is one forward as the guest sees it.
type RuntimePort struct {
	Service string `json:"service"`
	Name    string `json:"name"`
	Guest   int    `json:"guest"`
	Host    int    `json:"host"`
}

// ReadRuntime reads the runtime config from fw_cfg under sysfs. No config
// (a build, a boot check) is an empty Runtime.
func ReadRuntime(ctx context.Context, sysfs string) (Runtime, error) {
	path := filepath.Join(sysfs, "firmware/qemu_fw_cfg/by_name", RuntimeFWCfg, "raw")
	if _, err := os.Stat(filepath.Join(sysfs, "firmware/qemu_fw_cfg")); err != nil {
		// Best effort: udev usually loaded it already.
		_ = exec.CommandContext(ctx, "modprobe", "qemu_fw_cfg").Run()
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Runtime{}, nil
	}
	if err != nil {
		return Runtime{}, fmt.Errorf("read runtime config: %w", err)
	}
	var rt Runtime
	if err := json.Unmarshal(b, &rt); err != nil {
		return Runtime{}, fmt.Errorf("parse runtime config: %w", err)
	}
	return rt, nil
}

var envKey = regexp.MustCompile(`[^A-Z0-9_]`)

// EnvLines renders rt as an EnvironmentFile: EMU_INSTANCE, one
// EMU_PORT_<SERVICE>_<NAME> per forward (the host port, for services that
// print their public address), then the overrides, sorted.
func (rt Runtime) EnvLines() string { return rt.envLines(strconv.Quote) }

// ContainerEnvLines renders rt as podman's --env-file: the same lines, the
// values literal. That format has no way to write a line break: an override
// holding one is left out.
func (rt Runtime) ContainerEnvLines() string {
	return rt.envLines(func(v string) string { return v })
}

func (rt Runtime) envLines(quote func(string) string) string {
	var lines []string
	if rt.Instance != "" {
		lines = append(lines, "EMU_INSTANCE="+rt.Instance)
	}
	for _, p := range rt.Ports {
		k := envKey.ReplaceAllString(strings.ToUpper(p.Service+"_"+p.Name), "_")
		lines = append(lines, "EMU_PORT_"+k+"="+strconv.Itoa(p.Host))
	}
	keys := make([]string, 0, len(rt.Env))
	for k := range rt.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := quote(rt.Env[k])
		if strings.ContainsAny(v, "\n\r") {
			continue
		}
		lines = append(lines, k+"="+v)
	}
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// WriteEnv writes the env files for the services: path for units, and
// container for podman.
func (rt Runtime) WriteEnv(path, container string) error {
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
func SetupRuntime(ctx context.Context) error {
	rt, err := ReadRuntime(ctx, "/sys")
	if err != nil {
		return err
	}
	var errs []error
	if err := rt.WriteEnv(EnvFile, ContainerEnvFile); err != nil {
		errs = append(errs, err)
	}
	if len(rt.Ports) > 0 {
		if err := ConfigureNetwork(ctx, "eth0"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
