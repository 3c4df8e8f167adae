package spec

import (
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// EnginePackages are added to the base of a stack that uses containers.
// Podman: no daemon to start at boot (measured in bench/engines);
// catatonit is the containers' PID 1 (podman run --init).
var EnginePackages = []string{"podman", "catatonit"}

// EngineSlim is removed after the bake of a stack that uses containers:
// what podman's packages bring that a rootful engine on the guest's network
// never runs (CNI plugins: podman 5 networks with netavark; a test helper;
// the DHCP proxy; the rootless port forwarder). 100 MB of the tree. Also
// GnuPG's programs, which podman's libgpgme runs only to check image
// signatures: images come from local archives, which carry none, and the
// default policy accepts them unsigned. The libraries stay (podman links
// them), and apt's gpgv.
var EngineSlim = []string{
	"/usr/lib/cni",
	"/usr/libexec/podman/podman-testing",
	"/usr/lib/podman/netavark-dhcp-proxy-client",
	"/usr/libexec/podman/rootlessport",
	"/usr/bin/gpg", "/usr/bin/gpg-agent", "/usr/bin/gpgsm", "/usr/bin/gpgconf",
	"/usr/bin/gpg-connect-agent", "/usr/bin/dirmngr", "/usr/bin/dirmngr-client",
	"/usr/bin/pinentry-curses", "/usr/lib/gnupg",
}

// Volume is one parsed volume entry, "NAME:/path[:ro]".
type Volume struct {
	Name     string
	Path     string
	ReadOnly bool
}

var volumeNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// ParseVolume parses a volume entry. Only named volumes: the guest's disk
// holds them, and the host's paths do not exist in the guest.
func ParseVolume(v string) (Volume, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Volume{}, fmt.Errorf("invalid volume %q: want NAME:/path or NAME:/path:ro", v)
	}
	vol := Volume{Name: parts[0], Path: parts[1]}
	if len(parts) == 3 {
		if parts[2] != "ro" && parts[2] != "rw" {
			return Volume{}, fmt.Errorf("invalid volume %q: option %q, want ro or rw", v, parts[2])
		}
		vol.ReadOnly = parts[2] == "ro"
	}
	switch {
	case !volumeNameRe.MatchString(vol.Name):
		return Volume{}, fmt.Errorf("invalid volume name %q: want letters, digits, '_', '.' and '-' (a named volume, not a host path)", vol.Name)
	case !path.IsAbs(vol.Path) || path.Clean(vol.Path) != vol.Path:
		return Volume{}, fmt.Errorf("invalid volume %q: the path in the container must be absolute and clean", v)
	case vol.Path == "/":
		return Volume{}, fmt.Errorf("invalid volume %q: cannot mount over the container's root", v)
	}
	return vol, nil
}

// ImagePath returns the absolute host path of an images entry.
func (s *Stack) ImagePath(p string) string {
	p = filepath.FromSlash(p)
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(s.Dir, p)
}

// UsesContainers reports whether the guest needs a container engine.
func (s *Stack) UsesContainers() bool {
	if len(s.Images) > 0 {
		return true
	}
	for _, svc := range s.Services {
		if svc.Image != "" {
			return true
		}
	}
	for _, st := range s.Bake {
		if st.Container != "" {
			return true
		}
	}
	return false
}

// ImageRefs returns every image reference the stack names, each with the
// field that names it, in file order.
func (s *Stack) ImageRefs() []ImageRef {
	var refs []ImageRef
	for _, name := range s.ServiceNames() {
		if img := s.Services[name].Image; img != "" {
			refs = append(refs, ImageRef{Field: "services." + name + ".image", Ref: img})
		}
	}
	for i, st := range s.Bake {
		if st.Container != "" {
			refs = append(refs, ImageRef{Field: fmt.Sprintf("bake[%d].container", i), Ref: st.Container})
		}
	}
	return refs
}

// ImageRef is an image named by a field of the stack file.
type ImageRef struct {
	Field string
	Ref   string
}

// Errorf returns a validation error for field, at its line in the stack
// file when known: for checks made after loading, such as whether an image
// holds a name.
func (s *Stack) Errorf(field, format string, args ...any) error {
	file := s.Path
	if file == "" {
		file = DefaultFile
	}
	return &Error{File: file, Line: s.lines[field], Field: field, Msg: fmt.Sprintf(format, args...)}
}

var (
	containerUserRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$`)
	imageRefRe      = regexp.MustCompile(`^[a-z0-9][a-z0-9._/:@-]*$`)
)

// MaxImageSources bounds images: each source is one virtio disk on the
// guest's PCI bus while provisioning, and the q35 root bus has about 25
// slots left after emu's own devices.
const MaxImageSources = 20

func (s *Stack) checkImages(c *checker) {
	if n := len(s.Images); n > MaxImageSources {
		c.addf("images", "%d image sources, at most %d (each is one disk while provisioning): save several images into one tarball (docker save -o all.tar IMAGE...)", n, MaxImageSources)
		return
	}
	seen := map[string]int{}
	for i, p := range s.Images {
		field := fmt.Sprintf("images[%d]", i)
		if p == "" {
			c.addf(field, "empty path: want an image tarball (docker save) or an OCI layout directory")
			continue
		}
		abs := s.ImagePath(p)
		if j, dup := seen[abs]; dup {
			c.addf(field, "image %s already listed as images[%d]", p, j)
			continue
		}
		seen[abs] = i
		if _, err := statSource(p, abs); err != nil {
			c.addf(field, "image %v", err)
		}
	}
}

// checkImageRef checks the form of an image reference; whether an image
// holds it is checked when the images are read (emu build).
func checkImageRef(c *checker, s *Stack, field, ref string) {
	switch {
	case !imageRefRe.MatchString(ref):
		c.addf(field, "invalid image reference %q: want a name such as %q, or an image ID", ref, "demo-api:latest")
	case len(s.Images) == 0:
		c.addf(field, "image %s: the stack lists no images: add its tarball (docker save) or OCI layout to images", ref)
	}
}

func checkContainerUser(c *checker, field, u string) {
	if u != "" && !containerUserRe.MatchString(u) {
		c.addf(field, "invalid container user %q: want a name or id, optionally with :group", u)
	}
}

func checkVolumes(c *checker, field string, vols []string) {
	paths := map[string]int{}
	for i, v := range vols {
		f := fmt.Sprintf("%s[%d]", field, i)
		vol, err := ParseVolume(v)
		if err != nil {
			c.addf(f, "%v", err)
			continue
		}
		if j, dup := paths[vol.Path]; dup {
			c.addf(f, "path %s already mounted by %s[%d]", vol.Path, field, j)
		}
		paths[vol.Path] = i
	}
}

// checkContainer checks the container fields of a service.
func (s *Stack) checkContainer(c *checker, field string, svc Service) {
	if svc.Image == "" {
		for name, set := range map[string]bool{"command": svc.Command != nil, "entrypoint": svc.Entrypoint != nil, "volumes": svc.Volumes != nil} {
			if set {
				c.addf(field+"."+name, "%s is for container services: set image, or use run", name)
			}
		}
		return
	}
	checkImageRef(c, s, field+".image", svc.Image)
	checkVolumes(c, field+".volumes", svc.Volumes)
	checkContainerUser(c, field+".user", svc.User)
	// Podman reads the env from a file that has no quoting.
	for _, k := range sortedKeys(svc.Env) {
		if strings.ContainsAny(svc.Env[k], "\n\r\x00") {
			c.addf(field+".env."+k, "a container's variable cannot hold a line break")
		}
	}
}
