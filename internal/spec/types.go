// Package spec is the stack file, emu.yaml: its types, loading, defaults and
// validation.
package spec

// Stack is a loaded, defaulted stack file.
type Stack struct {
	Name  string `yaml:"name" json:"name"`
	Base  Base   `yaml:"base" json:"base"`
	VM    VM     `yaml:"vm" json:"vm"`
	Files []File `yaml:"files" json:"files,omitempty"`
	// Images are container image sources on the host, relative to the
	// stack file: tarballs as `docker save` writes them, or OCI layout
	// directories. They are loaded into the guest's engine at build time.
	Images   []string           `yaml:"images" json:"images,omitempty"`
	Services map[string]Service `yaml:"services" json:"services,omitempty"`
	Bake     []Step             `yaml:"bake" json:"bake,omitempty"`
	Slim     Slim               `yaml:"slim" json:"slim"`
	// Connect are the values a program on the host needs to reach the
	// stack, by variable name: templates over the instance's actual host
	// ports (`${ports.SERVICE.NAME}`) and name (`${instance}`).
	Connect map[string]string `yaml:"connect" json:"connect,omitempty"`

	// Path is the stack file's absolute path; Dir its directory, against
	// which relative file sources resolve. Set by Load.
	Path string `yaml:"-" json:"-"`
	Dir  string `yaml:"-" json:"-"`
	// lines maps field paths to their lines in the file, for errors found
	// after loading (Errorf).
	lines map[string]int
}

// Base is the guest's Debian root filesystem.
type Base struct {
	// Suite is the Debian release (default "trixie").
	Suite string `yaml:"suite" json:"suite"`
	// Packages are installed on top of a minimal system with systemd.
	Packages []string `yaml:"packages" json:"packages,omitempty"`
	// Kernel is the kernel package (default "linux-image-cloud-amd64").
	Kernel string `yaml:"kernel" json:"kernel,omitempty"`
	// Arch is the guest architecture (default "amd64").
	Arch string `yaml:"arch" json:"arch,omitempty"`
}

// VM sizes the virtual machine.
type VM struct {
	CPUs   int  `yaml:"cpus" json:"cpus"`
	Memory Size `yaml:"memory" json:"memory"`
	Disk   Size `yaml:"disk" json:"disk"`
}

// File copies a host file into the guest.
type File struct {
	// Src is the host path, relative to the stack file's directory.
	Src string `yaml:"src" json:"src"`
	// Dst is the absolute guest path.
	Dst string `yaml:"dst" json:"dst"`
	// Mode is the guest file mode (default: the source's mode).
	Mode FileMode `yaml:"mode" json:"mode,omitempty"`
	// Optimize strips and compresses the file at build time, and proves the
	// result still runs; unset leaves the file as it is.
	Optimize Optimize `yaml:"optimize" json:"optimize,omitzero"`
}

// Optimize is written `optimize: true` (the defaults) or as a mapping. Its
// zero value (or `optimize: false`) means the file is copied as it is.
type Optimize struct {
	// Enabled is set by `optimize: true` or any mapping.
	Enabled bool `yaml:"-" json:"enabled"`
	// Strip removes symbols (default true).
	Strip bool `yaml:"strip" json:"strip"`
	// Compress is "upx" (default) or "none".
	Compress string `yaml:"compress" json:"compress,omitempty"`
	// Level is UPX's level, 1 to 9 (default 9), or 10 for --best.
	Level int `yaml:"level" json:"level,omitempty"`
	// LZMA makes UPX use LZMA: smaller, slower to start.
	LZMA bool `yaml:"lzma" json:"lzma,omitempty"`
	// Verify runs each candidate; without it nothing is run.
	Verify *Verify `yaml:"verify" json:"verify,omitempty"`
}

// Verify runs a binary and checks how it exits. Written as a mapping, or as
// a list: the arguments alone.
type Verify struct {
	Args []string `yaml:"args" json:"args,omitempty"`
	// Exit is the expected exit code (default 0).
	Exit int `yaml:"exit" json:"exit"`
	// Output, when set, must appear in the combined stdout and stderr.
	Output  string   `yaml:"output" json:"output,omitempty"`
	Timeout Duration `yaml:"timeout" json:"timeout,omitempty"`
}

// Service is a long-running process in the guest: a systemd unit the base
// already has (Unit), a command emu wraps in a unit (Run), or a container
// from one of the stack's images (Image).
type Service struct {
	Unit  string   `yaml:"unit" json:"unit,omitempty"`
	Run   []string `yaml:"run" json:"run,omitempty"`
	Image string   `yaml:"image" json:"image,omitempty"`
	// Command replaces the image's Cmd (the arguments to its entrypoint);
	// Entrypoint replaces the entrypoint. Containers only.
	Command    []string `yaml:"command" json:"command,omitempty"`
	Entrypoint []string `yaml:"entrypoint" json:"entrypoint,omitempty"`
	// Volumes are named volumes, "NAME:/path[:ro]", kept in the guest's
	// disk: they survive down and up, until reset. Containers only.
	Volumes []string          `yaml:"volumes" json:"volumes,omitempty"`
	Env     map[string]string `yaml:"env" json:"env,omitempty"`
	User    string            `yaml:"user" json:"user,omitempty"`
	After   []string          `yaml:"after" json:"after,omitempty"`
	Ports   []Port            `yaml:"ports" json:"ports,omitempty"`
	Health  Health            `yaml:"health" json:"health"`
	// Restart is when a stopped run or container service is started again:
	// on-failure (default), always or no. A unit keeps its own policy.
	Restart string `yaml:"restart" json:"restart,omitempty"`
}

// Kind of a service.
const (
	KindUnit      = "unit"
	KindRun       = "run"
	KindContainer = "container"
)

// Kind is the service's kind: unit, run or container.
func (svc Service) Kind() string {
	switch {
	case svc.Image != "":
		return KindContainer
	case svc.Unit != "":
		return KindUnit
	}
	return KindRun
}

// Restart policies.
const (
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
	RestartNo        = "no"
)

// Port forwards a guest TCP port to 127.0.0.1:Host.
type Port struct {
	Name  string `yaml:"name" json:"name,omitempty"`
	Guest int    `yaml:"guest" json:"guest"`
	Host  int    `yaml:"host" json:"host"`
}

// Health is how the agent decides a service is up. Exactly one of TCP, HTTP
// and Exec is set.
type Health struct {
	TCP  int         `yaml:"tcp" json:"tcp,omitempty"`
	HTTP *HTTPHealth `yaml:"http" json:"http,omitempty"`
	Exec []string    `yaml:"exec" json:"exec,omitempty"`
	// Timeout bounds the wait for the first success (default 2m).
	Timeout Duration `yaml:"timeout" json:"timeout,omitempty"`
}

// HTTPHealth passes when GET http://127.0.0.1:Port/Path answers Status
// (default 200).
type HTTPHealth struct {
	Port   int    `yaml:"port" json:"port"`
	Path   string `yaml:"path" json:"path"`
	Status int    `yaml:"status" json:"status,omitempty"`
}

// Step is a bake step: run once, at build time, in order, inside the VM, with
// every service started and healthy.
type Step struct {
	Name string `yaml:"name" json:"name"`
	// Run is the command. With Container, it is the arguments to the
	// image's entrypoint (the image's Cmd when left out).
	Run []string `yaml:"run" json:"run"`
	// Container runs the step in a container of this image, on the guest's
	// network, removed when the step ends.
	Container string `yaml:"container" json:"container,omitempty"`
	// Volumes are named volumes for a container step, "NAME:/path[:ro]":
	// the same names as the services' volumes, so a step can seed them.
	Volumes []string `yaml:"volumes" json:"volumes,omitempty"`
	// Env is given to the step only; it never reaches the image.
	Env     map[string]string `yaml:"env" json:"env,omitempty"`
	User    string            `yaml:"user" json:"user,omitempty"`
	Dir     string            `yaml:"dir" json:"dir,omitempty"`
	Timeout Duration          `yaml:"timeout" json:"timeout,omitempty"`
}

// Slim lists what to remove from the guest after the bake.
type Slim struct {
	Remove []string `yaml:"remove" json:"remove,omitempty"`
}
