// Package guest renders the files emu adds to a guest tree: the agent's unit
// and config, one unit per command service, and the system settings an
// image needs (no getty, no password login, modules for the host channel).
package guest

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
)

// File is one file, or symlink when Link is set, to place in the tree.
type File struct {
	Path string
	Mode os.FileMode
	Data []byte
	Link string
}

// RootDevice is the guest disk as the kernel names it (virtio-blk, no
// partition table: the image is one ext4 filesystem).
const RootDevice = "/dev/vda"

// Console is the serial console's device for a guest of arch: the PC's
// 16550 UART on amd64, the virt machine's PL011 on arm64.
func Console(arch string) string {
	if arch == "arm64" {
		return "ttyAMA0"
	}
	return "ttyS0"
}

// Cmdline returns the kernel command line for mode (provision or run) on a
// guest of arch.
func Cmdline(mode proto.Mode, arch string) string {
	return strings.Join([]string{
		"root=" + RootDevice, "rw", "console=" + Console(arch), "panic=-1", "loglevel=4",
		"net.ifnames=0", "systemd.show_status=error", "systemd.firstboot=off",
		"emu.mode=" + string(mode),
	}, " ")
}

// UnitName is the systemd unit that runs service name.
func UnitName(name string, svc spec.Service) string {
	if svc.Unit != "" {
		return svc.Unit
	}
	return "emu-" + name + ".service"
}

// masked units: logins, timers that would wake a build or a developer's VM.
var masked = []string{
	"getty@.service", "serial-getty@.service", "console-getty.service",
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
	"e2scrub_all.timer", "fstrim.timer", "man-db.timer",
}

// Render returns every file emu adds to the tree of s, sorted by path.
// images maps each image reference the stack names (spec.ImageRefs) to the
// image's ID; it may be nil for a stack without containers.
func Render(s *spec.Stack, images map[string]string) ([]File, error) {
	cfg := AgentConfig(s)
	cj, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render agent config: %w", err)
	}
	files := []File{
		{Path: proto.ConfigPath, Mode: 0o644, Data: append(cj, '\n')},
		{Path: "/etc/systemd/system/" + proto.UnitName, Mode: 0o644, Data: []byte(agentUnit)},
		{Path: "/etc/systemd/system/sysinit.target.wants/" + proto.UnitName, Link: "/etc/systemd/system/" + proto.UnitName},
		{Path: "/etc/modules-load.d/emu.conf", Mode: 0o644, Data: []byte("# emu: the host channel and entropy\nvirtio_console\nvirtio_rng\n")},
		{Path: "/etc/fstab", Mode: 0o644, Data: []byte("# emu: one ext4 filesystem on the virtio disk\n" + RootDevice + " / ext4 rw,errors=remount-ro 0 0\n")},
		{Path: "/etc/hostname", Mode: 0o644, Data: []byte(s.Name + "\n")},
		{Path: "/etc/hosts", Mode: 0o644, Data: []byte("127.0.0.1 localhost\n127.0.1.1 " + s.Name + "\n::1 localhost ip6-localhost ip6-loopback\n")},
	}
	if s.UsesContainers() {
		files = append(files, File{Path: EngineConf, Mode: 0o644, Data: []byte(engineConf)})
	}
	for _, u := range masked {
		files = append(files, File{Path: "/etc/systemd/system/" + u, Link: "/dev/null"})
	}
	for _, name := range s.ServiceNames() {
		svc := s.Services[name]
		switch svc.Kind() {
		case spec.KindUnit:
			continue
		case spec.KindContainer:
			id, ok := images[svc.Image]
			if !ok {
				return nil, fmt.Errorf("render service %s: no image ID for %s", name, svc.Image)
			}
			unit, env := containerUnit(s, name, svc, id)
			files = append(files,
				File{Path: "/etc/systemd/system/" + UnitName(name, svc), Mode: 0o644, Data: []byte(unit)},
				File{Path: ContainerEnvDir + "/" + name + ".env", Mode: 0o600, Data: []byte(env)})
			continue
		}
		files = append(files, File{
			Path: "/etc/systemd/system/" + UnitName(name, svc),
			Mode: 0o644,
			Data: []byte(serviceUnit(s, name, svc)),
		})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// AgentConfig is the agent's view of s: services in start order.
func AgentConfig(s *spec.Stack) proto.Config {
	cfg := proto.Config{Stack: s.Name}
	for _, name := range s.StartOrder() {
		svc := s.Services[name]
		h := proto.Health{TCP: svc.Health.TCP, Exec: svc.Health.Exec, Timeout: svc.Health.Timeout.D()}
		if svc.Health.HTTP != nil {
			h.HTTPPort, h.HTTPPath, h.HTTPStatus = svc.Health.HTTP.Port, svc.Health.HTTP.Path, svc.Health.HTTP.Status
		}
		var ports []string
		for _, p := range svc.Ports {
			ports = append(ports, portLabel(p)+"="+strconv.Itoa(p.Guest))
		}
		cfg.Services = append(cfg.Services, proto.Service{
			Name: name, Unit: UnitName(name, svc), After: svc.After, Health: h, Ports: ports,
			// emu's own units read the runtime env; a stock unit does not.
			RuntimeEnv: svc.Kind() != spec.KindUnit,
		})
	}
	return cfg
}

func portLabel(p spec.Port) string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(p.Guest)
}

const agentUnit = `# Written by emu. The guest agent: bake steps at build time, service
# health at run time, events to the host over virtio-serial.
[Unit]
Description=emu guest agent
DefaultDependencies=no
Wants=systemd-modules-load.service
After=systemd-modules-load.service local-fs.target systemd-remount-fs.service
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=simple
ExecStart=` + proto.BinaryPath + `
StandardOutput=journal+console
StandardError=journal+console
KillMode=process

[Install]
WantedBy=sysinit.target
`

// unitHead writes a service unit's [Unit] section and the start of its
// [Service] section.
func unitHead(b *strings.Builder, s *spec.Stack, name, what string, svc spec.Service) {
	fmt.Fprintf(b, "# Written by emu for stack %s. Started by emu-agent, in dependency order.\n", s.Name)
	b.WriteString("[Unit]\n")
	fmt.Fprintf(b, "Description=%s (emu %s)\n", name, what)
	after := []string{"network.target"}
	for _, dep := range svc.After {
		after = append(after, UnitName(dep, s.Services[dep]))
	}
	fmt.Fprintf(b, "After=%s\n", strings.Join(after, " "))
	b.WriteString("\n[Service]\nType=simple\n")
}

// restartLines is the unit's restart policy.
func restartLines(svc spec.Service) string {
	r := svc.Restart
	if r == "" {
		r = spec.RestartOnFailure
	}
	return "Restart=" + r + "\nRestartSec=1\n"
}

func serviceUnit(s *spec.Stack, name string, svc spec.Service) string {
	var b strings.Builder
	unitHead(&b, s, name, "service", svc)
	fmt.Fprintf(&b, "ExecStart=%s\n", execLine(svc.Run))
	for _, k := range slices.Sorted(maps.Keys(svc.Env)) {
		fmt.Fprintf(&b, "Environment=%s\n", quoteEnv(k+"="+svc.Env[k]))
	}
	// Runtime settings from `emu up` land here; they override the above.
	b.WriteString("EnvironmentFile=-/run/emu/env\n")
	if svc.User != "" {
		fmt.Fprintf(&b, "User=%s\n", svc.User)
	}
	b.WriteString(restartLines(svc))
	return b.String()
}

// execLine quotes argv for ExecStart: systemd splits on spaces, honours
// double quotes with C escapes, and expands % and $.
func execLine(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = quote(a)
	}
	return strings.Join(q, " ")
}

// quote quotes one ExecStart= word.
func quote(s string) string {
	return quoteEnv(strings.ReplaceAll(s, "$", "$$"))
}

// quoteEnv quotes one Environment= assignment. There systemd expands % but
// not $, so a "$" stays single; a line break is escaped, as it would end
// the unit file's line.
func quoteEnv(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	if s != "" && !strings.ContainsAny(s, " \t\n\r\"'\\;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`)
	return `"` + r.Replace(s) + `"`
}

// Write places files under root, creating parent directories.
func Write(root string, files []File) error {
	for _, f := range files {
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("write guest file %s: %w", f.Path, err)
		}
		if f.Link != "" {
			_ = os.Remove(dst)
			if err := os.Symlink(f.Link, dst); err != nil {
				return fmt.Errorf("write guest link %s: %w", f.Path, err)
			}
			continue
		}
		if err := os.WriteFile(dst, f.Data, f.Mode); err != nil {
			return fmt.Errorf("write guest file %s: %w", f.Path, err)
		}
		if err := os.Chmod(dst, f.Mode); err != nil {
			return fmt.Errorf("write guest file %s: %w", f.Path, err)
		}
	}
	return nil
}
