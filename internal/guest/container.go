package guest

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
)

// Podman is the engine's binary in the guest.
const Podman = proto.PodmanPath

// ContainerEnvDir holds each container service's env file (the stack's
// env); the runtime's (proto.ContainerEnvFile) is read after it, so it wins.
const ContainerEnvDir = "/etc/emu/containers"

// EngineConf is emu's drop-in for podman's containers.conf.
const EngineConf = "/etc/containers/containers.conf.d/emu.conf"

// engineConf: the guest has no D-Bus, so podman manages cgroups itself
// (with systemd's manager, crun fails: "cannot open sd-bus"); its events go
// to a file in /run, not into the image's journal.
const engineConf = `# Written by emu. The guest has no D-Bus: podman manages cgroups itself.
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
`

// ContainerName is the engine's name for service name's container.
func ContainerName(name string) string { return "emu-" + name }

// containerUnit returns the unit that runs service name as a container of
// image id, and the service's env file. The container shares the guest's
// network: its ports are the guest's, forwarded and probed like any other
// service's. Its output goes to the unit's journal (passthrough), which is
// what `emu logs` reads; its cgroup is the unit's (split), so stopping the
// unit stops all of it.
func containerUnit(s *spec.Stack, name string, svc spec.Service, id string) (unit, env string) {
	var b strings.Builder
	unitHead(&b, s, name, "container", svc)
	// --init: catatonit is the container's PID 1 and passes signals on. A
	// program that installs no SIGTERM handler then dies of it as it
	// would outside a container, instead of being PID 1, which the
	// kernel shields from signals it has no handler for: its stop would
	// wait out TimeoutStopSec.
	args := []string{Podman, "run", "--name=" + ContainerName(name), "--replace", "--rm", "--init",
		"--pull=never", "--network=host", "--cgroups=split", "--log-driver=passthrough",
		"--env-file=" + ContainerEnvDir + "/" + name + ".env", "--env-file=" + proto.ContainerEnvFile}
	args = append(args, volumeArgs(svc.Volumes)...)
	if svc.User != "" {
		args = append(args, "--user="+svc.User)
	}
	if svc.Entrypoint != nil {
		ep, _ := json.Marshal(svc.Entrypoint) // strings always marshal
		args = append(args, "--entrypoint="+string(ep))
	}
	args = append(args, strings.TrimPrefix(id, "sha256:"))
	args = append(args, svc.Command...)
	fmt.Fprintf(&b, "# Image %s (%s), never pulled.\n", svc.Image, id)
	fmt.Fprintf(&b, "ExecStart=%s\n", execLine(args))
	fmt.Fprintf(&b, "ExecStopPost=-%s\n", execLine([]string{Podman, "rm", "--force", "--ignore", "--time=10", ContainerName(name)}))
	// podman passes SIGTERM on to the container and exits 143 with it.
	b.WriteString("KillMode=mixed\nTimeoutStopSec=30\nSuccessExitStatus=143\n")
	b.WriteString(restartLines(svc))
	return b.String(), EnvFile(svc.Env)
}

// EnvFile renders env as podman reads an --env-file: NAME=value lines, the
// value taken literally (spec rejects line breaks in it).
func EnvFile(env map[string]string) string {
	var b strings.Builder
	b.WriteString("# Written by emu. podman --env-file: values are literal.\n")
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "%s=%s\n", k, env[k])
	}
	return b.String()
}

// Volumes returns the names of every named volume the stack uses.
func Volumes(s *spec.Stack) []string {
	seen := map[string]bool{}
	var names []string
	add := func(vols []string) {
		for _, v := range vols {
			if vol, err := spec.ParseVolume(v); err == nil && !seen[vol.Name] {
				seen[vol.Name] = true
				names = append(names, vol.Name)
			}
		}
	}
	for _, name := range s.ServiceNames() {
		add(s.Services[name].Volumes)
	}
	for _, st := range s.Bake {
		add(st.Volumes)
	}
	sort.Strings(names)
	return names
}

// volumeArgs are podman's --volume flags for named volumes.
func volumeArgs(vols []string) []string {
	var args []string
	for _, v := range vols {
		vol, err := spec.ParseVolume(v)
		if err != nil {
			continue // validated by spec
		}
		arg := "--volume=" + vol.Name + ":" + vol.Path
		if vol.ReadOnly {
			arg += ":ro"
		}
		args = append(args, arg)
	}
	return args
}

// ContainerStep returns the command that runs a container bake step. The
// step's env reaches the container through podman's own environment
// (--env=NAME), never its command line. podman records a container's env
// in its database, and a removed record's bytes stay in the file's free
// pages: so the step runs on a transient database, in /run, gone at power
// off (--transient-store). Its volumes exist already (the agent creates
// the stack's volumes first), so what it writes into them stays.
func ContainerStep(st spec.Step, id string) []string {
	args := []string{Podman, "--transient-store", "run", "--name=emu-bake-" + strings.ToLower(st.Name), "--replace", "--rm",
		"--pull=never", "--network=host", "--log-driver=passthrough"}
	for _, k := range slices.Sorted(maps.Keys(st.Env)) {
		args = append(args, "--env="+k)
	}
	args = append(args, volumeArgs(st.Volumes)...)
	if st.User != "" {
		args = append(args, "--user="+st.User)
	}
	if st.Dir != "" {
		args = append(args, "--workdir="+st.Dir)
	}
	args = append(args, strings.TrimPrefix(id, "sha256:"))
	return append(args, st.Run...)
}
