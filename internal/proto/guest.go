// Package proto is the host-guest protocol: what the host and the guest
// agent say to each other and where they find each other. The agent's
// config and the runtime config, the requests, the field names of event
// payloads, the channel's port name and the guest paths emu reserves.
//
// Both sides import it; it imports only the standard library and
// internal/event, so the agent stays a small static binary.
package proto

import (
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Mode is what the agent was booted for.
type Mode string

const (
	// Provision: wait for the host's bake request, run it, slim, power off.
	Provision Mode = "provision"
	// Run: start the services, report health, serve requests until shutdown.
	Run Mode = "run"
)

// Paths inside the guest.
const (
	ConfigPath = "/etc/emu/agent.json"
	BinaryPath = "/usr/local/sbin/emu-agent"
	UnitName   = "emu-agent.service"
	// PortName is the virtio-serial port's name (qemu.AgentPortName).
	PortName = "emu.agent"
)

// Config is the agent's view of the stack, rendered by the host at build
// time into ConfigPath. It holds no secrets: bake steps and their env come
// over the wire.
type Config struct {
	Stack    string    `json:"stack"`
	Services []Service `json:"services,omitempty"`
}

// Service is one service as the agent starts and probes it.
type Service struct {
	Name   string   `json:"name"`
	Unit   string   `json:"unit"`
	After  []string `json:"after,omitempty"`
	Health Health   `json:"health"`
	// Ports is informative: "name=guest" pairs reported with health events.
	Ports []string `json:"ports,omitempty"`
	// RuntimeEnv: the service reads the runtime env (EnvFile or
	// ContainerEnvFile), so a resume that changes it restarts the service.
	RuntimeEnv bool `json:"runtime_env,omitempty"`
}

// Health is a service's health check; exactly one of TCP, HTTP, Exec.
type Health struct {
	TCP        int           `json:"tcp,omitempty"`
	HTTPPort   int           `json:"http_port,omitempty"`
	HTTPPath   string        `json:"http_path,omitempty"`
	HTTPStatus int           `json:"http_status,omitempty"`
	Exec       []string      `json:"exec,omitempty"`
	Timeout    time.Duration `json:"timeout"`
}

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
	Ports    []Forward         `json:"ports,omitempty"`
}

// Forward forwards a service's guest port Guest to 127.0.0.1:Host. It is
// the one port-forward type: planned from the stack file and the
// overrides, passed to QEMU, handed to the guest in the runtime config,
// and recorded in instance.json.
type Forward struct {
	Service string `json:"service"`
	// Name is the port's name, or its guest port number when unnamed.
	Name  string `json:"name"`
	Guest int    `json:"guest"`
	Host  int    `json:"host"`
}

// Key is the forward's override key, SERVICE.NAME.
func (f Forward) Key() string { return f.Service + "." + f.Name }

// URL is where the port listens on the host.
func (f Forward) URL() string { return "127.0.0.1:" + strconv.Itoa(f.Host) }

// String describes the forward: "api (http) 127.0.0.1:28080 -> guest 8080".
func (f Forward) String() string {
	return f.Label() + " " + f.URL() + " -> guest " + strconv.Itoa(f.Guest)
}

// EnvName is the variable that holds the forward's host port, for the
// guest's services and for host programs: EMU_PORT_<SERVICE>_<NAME>.
func (f Forward) EnvName() string {
	return "EMU_PORT_" + envKey.ReplaceAllString(strings.ToUpper(f.Service+"_"+f.Name), "_")
}

// Label names the forward for messages: "api (http)".
func (f Forward) Label() string { return f.Service + " (" + f.Name + ")" }

// OptimizeDir is where the host puts the optimized copies of files[] with
// optimize, as OptimizeDir/<index>/<candidate>/<name>. The agent installs
// one per file and removes the directory before the services start.
const OptimizeDir = "/var/lib/emu/binopt"

// OptimizeStage names the guest's optimize stage and its per-file log
// events, whose Data is a BinaryChoice.
const OptimizeStage = "optimize"

// LoadStage is the provisioning stage that loads container images into the
// engine (the host's own "images" stage reads and checks them).
const LoadStage = "load"

// PodmanPath is podman's binary in a Debian guest.
const PodmanPath = "/usr/bin/podman"

// BinaryChoice is the guest's choice for one optimized binary: the Data
// of the optimize stage's log event for the file.
type BinaryChoice struct {
	Dst string `json:"dst"`
	// Chosen is the candidate installed ("original" when none passed).
	Chosen string `json:"chosen"`
	Size   int64  `json:"size"`
	// Verified: the chosen file ran its verify.
	Verified bool `json:"verified"`
	// Reason says why candidates were passed over.
	Reason string  `json:"reason,omitempty"`
	Checks []Check `json:"checks,omitempty"`
}

// Check is one verify run of one candidate, as the host's report records it.
type Check struct {
	Candidate string        `json:"candidate"`
	OK        bool          `json:"ok"`
	ExitCode  int           `json:"exit_code"`
	TimedOut  bool          `json:"timed_out,omitempty"`
	Output    string        `json:"output,omitempty"` // the last lines
	Reason    string        `json:"reason,omitempty"` // why it failed
	Duration  time.Duration `json:"duration"`
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
		lines = append(lines, p.EnvName()+"="+strconv.Itoa(p.Host))
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

// Field names of event payloads (event.Event.Fields), on both sides of
// the wire.
const (
	// FieldAck on step.done: how long the agent waited for the host's ack of the step's start (Request.AckSteps).
	FieldAck = "ack"
	// FieldJournal on service.unhealthy: the service's last journal lines.
	FieldJournal = "journal"
	// FieldEnd "true" on the last log event of an OpLogs answer.
	FieldEnd = "end"
	// FieldCursor on that last event: the journal's cursor after the lines sent.
	FieldCursor = "cursor"
	// FieldReq on an OpLogs answer: the request's ID.
	FieldReq = "req"
	// FieldError on that last event: why there is no journal.
	FieldError = "error"
	// FieldVersion on hello: the agent's version.
	FieldVersion = "version"
	// FieldMode on hello: the agent's Mode.
	FieldMode = "mode"
	// FieldResume on hello: "true" when the agent answers OpResume, so a
	// suspend of its guest can be resumed.
	FieldResume = "resume"
	// FieldResumed on hello: "true" when it answers an OpResume.
	FieldResumed = "resumed"
	// FieldRestarted on the resume's ready: the services restarted for a
	// changed runtime env, comma-separated.
	FieldRestarted = "restarted"
	// FieldPorts on service events: the service's "name=guest" ports,
	// comma-separated.
	FieldPorts = "ports"
	// FieldSize on stage.done and on an optimize log event: a size in bytes.
	FieldSize = "size"
	// FieldKind on the build's "not optimized" log event: what the file is.
	FieldKind = "kind"
	// FieldSources on the load stage.done: how many image sources were loaded.
	FieldSources = "sources"
	// FieldStream on exec.output: "stdout" or "stderr".
	FieldStream = "stream"
	// FieldCached on stage.done: "true" when the stage's output came from a cache.
	FieldCached = "cached"
)
