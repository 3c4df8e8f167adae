package spec

import (
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// ReservedPaths belong to emu inside the guest: files may not overwrite them
// and slim may not remove them.
var ReservedPaths = []string{"/usr/local/sbin/emu-agent", "/etc/emu"}

var (
	labelRe      = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	envKeyRe     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	userRe       = regexp.MustCompile(`^[a-z_][a-z0-9_-]*\$?$`)
	stepNameRe   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	whitespaceRe = regexp.MustCompile(`\s`)
)

// Validate checks a defaulted stack against every rule and reports all the
// problems at once, joined, each naming its field path. Parse calls it (with
// line numbers); call it again after changing a Stack in code.
func (s *Stack) Validate() error {
	name := s.Path
	if name == "" {
		name = DefaultFile
	}
	return s.validate(name, nil)
}

type checker struct {
	file  string
	lines map[string]int
	errs  []error
}

func (c *checker) addf(field, format string, args ...any) {
	c.errs = append(c.errs, &Error{File: c.file, Line: c.line(field), Field: field, Msg: fmt.Sprintf(format, args...)})
}

// line finds the field's line, or failing that its nearest ancestor's.
func (c *checker) line(field string) int {
	for p := field; p != ""; {
		if l, ok := c.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

func (s *Stack) validate(file string, lines map[string]int) error {
	c := &checker{file: file, lines: lines}
	switch {
	case s.Name == "":
		c.addf("name", "required: the stack's name, a lowercase DNS label such as %q", "demo")
	case !isLabel(s.Name):
		c.addf("name", "invalid name %q: want a lowercase DNS label (a-z, 0-9 and '-', at most 63 characters, no leading or trailing '-')", s.Name)
	}
	s.checkBase(c)
	s.checkVM(c)
	s.checkFiles(c)
	s.checkImages(c)
	s.checkServices(c)
	s.checkBake(c)
	s.checkSlim(c)
	s.checkConnect(c)
	return errors.Join(c.errs...)
}

func isLabel(s string) bool { return len(s) <= 63 && labelRe.MatchString(s) }

func (s *Stack) checkBase(c *checker) {
	b := s.Base
	if strings.TrimSpace(b.Suite) == "" || whitespaceRe.MatchString(b.Suite) {
		c.addf("base.suite", "invalid suite %q: want a Debian release such as %q", b.Suite, DefaultSuite)
	}
	if strings.TrimSpace(b.Kernel) == "" || whitespaceRe.MatchString(b.Kernel) {
		c.addf("base.kernel", "invalid kernel package %q: want a package name such as %q", b.Kernel, DefaultKernel)
	}
	if b.Arch != "amd64" && b.Arch != "arm64" {
		c.addf("base.arch", "unsupported arch %q: want amd64 or arm64", b.Arch)
	}
	for i, p := range b.Packages {
		f := fmt.Sprintf("base.packages[%d]", i)
		switch {
		case p == "":
			c.addf(f, "empty package name")
		case whitespaceRe.MatchString(p):
			c.addf(f, "invalid package name %q: one package per entry, without spaces", p)
		}
	}
}

func (s *Stack) checkVM(c *checker) {
	if s.VM.CPUs < 1 || s.VM.CPUs > 64 {
		c.addf("vm.cpus", "%d CPUs out of range: want 1 to 64", s.VM.CPUs)
	}
	if s.VM.Memory < 256*MiB {
		c.addf("vm.memory", "memory %s too small: want at least 256MiB", s.VM.Memory)
	}
	if s.VM.Disk < GiB {
		c.addf("vm.disk", "disk %s too small: want at least 1GiB", s.VM.Disk)
	}
}

// checkGuestPath reports a guest path that is not absolute and clean.
func checkGuestPath(c *checker, field, p string) bool {
	switch {
	case p == "":
		c.addf(field, "required: an absolute guest path")
	case !path.IsAbs(p):
		c.addf(field, "guest path %q is not absolute", p)
	case path.Clean(p) != p:
		c.addf(field, "guest path %q is not clean: write %q", p, path.Clean(p))
	default:
		return true
	}
	return false
}

// within reports whether p is dir or lies under it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/") || dir == "/"
}

func (s *Stack) checkFiles(c *checker) {
	dsts := map[string]int{}
	for i, f := range s.Files {
		field := fmt.Sprintf("files[%d]", i)
		if f.Src == "" {
			c.addf(field+".src", "required: a host path, relative to the stack file's directory")
		} else if fi, err := statSource(f.Src, s.FilePath(f)); err != nil {
			c.addf(field+".src", "source %v", err)
		} else if !fi.Mode().IsRegular() {
			c.addf(field+".src", "source %s is not a regular file", f.Src)
		}
		checkOptimize(c, field+".optimize", f.Optimize)
		if !checkGuestPath(c, field+".dst", f.Dst) {
			continue
		}
		if f.Dst == "/" {
			c.addf(field+".dst", "destination is the root directory: name the file")
			continue
		}
		for _, r := range ReservedPaths {
			if within(f.Dst, r) || within(r, f.Dst) {
				c.addf(field+".dst", "destination %s collides with %s, which emu owns", f.Dst, r)
			}
		}
		if j, dup := dsts[f.Dst]; dup {
			c.addf(field+".dst", "destination %s already used by files[%d]", f.Dst, j)
		} else {
			dsts[f.Dst] = i
		}
	}
}

// statSource stats a host input, saying where it looked when it is missing.
// The error starts with name, as written in the stack file.
func statSource(name, abs string) (os.FileInfo, error) {
	fi, err := os.Stat(abs)
	switch {
	case os.IsNotExist(err):
		return nil, fmt.Errorf("%s does not exist (looked at %s)", name, abs)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return fi, nil
}

func checkOptimize(c *checker, field string, o Optimize) {
	if !o.Enabled {
		return
	}
	switch o.Compress {
	case CompressUPX:
		if o.Level < 1 || o.Level > 10 {
			c.addf(field+".level", "level %d out of range: want 1 to 9, or 10 for UPX's --best", o.Level)
		}
	case CompressNone:
		if o.LZMA {
			c.addf(field+".lzma", "lzma is a UPX method: set compress: upx, or remove lzma")
		}
		if !o.Strip {
			c.addf(field, "strip: false and compress: none leave nothing to do: remove optimize")
		}
	default:
		c.addf(field+".compress", "unknown compression %q: want upx or none", o.Compress)
	}
	if v := o.Verify; v != nil {
		if v.Exit < 0 || v.Exit > 255 {
			c.addf(field+".verify.exit", "exit code %d out of range: want 0 to 255", v.Exit)
		}
		if v.Timeout <= 0 {
			c.addf(field+".verify.timeout", "timeout %s must be positive", v.Timeout.D())
		}
	}
}

func checkPort(c *checker, field string, p int) bool {
	if p < 1 || p > 65535 {
		c.addf(field, "port %d out of range: want 1 to 65535", p)
		return false
	}
	return true
}

func checkEnv(c *checker, field string, env map[string]string) {
	for _, k := range sortedKeys(env) {
		if !envKeyRe.MatchString(k) {
			c.addf(field+"."+k, "invalid variable name %q: want letters, digits and '_', not starting with a digit", k)
		}
	}
}

func checkUser(c *checker, field, u string) {
	if u != "" && (len(u) > 32 || !userRe.MatchString(u)) {
		c.addf(field, "invalid user name %q", u)
	}
}

func (s *Stack) checkServices(c *checker) {
	hostPorts := map[int]string{}
	for _, name := range s.ServiceNames() {
		svc := s.Services[name]
		field := "services." + name
		if !isLabel(name) {
			c.addf(field, "invalid service name %q: want a lowercase DNS label (a-z, 0-9 and '-', at most 63 characters)", name)
		}
		kinds := 0
		for _, set := range []bool{svc.Unit != "", len(svc.Run) > 0, svc.Image != ""} {
			if set {
				kinds++
			}
		}
		switch {
		case kinds == 0:
			c.addf(field, "set one of unit (a systemd unit the base has), run (a command) or image (a container)")
		case kinds > 1:
			c.addf(field, "set only one of unit, run and image")
		case svc.Image != "":
		case svc.Unit != "":
			u := strings.TrimSuffix(svc.Unit, ".service")
			if u == svc.Unit || u == "" || strings.ContainsAny(u, "/ \t") {
				c.addf(field+".unit", "invalid unit %q: want a systemd service unit name such as %q", svc.Unit, "postgresql.service")
			}
		default:
			if !path.IsAbs(svc.Run[0]) {
				c.addf(field+".run[0]", "command %q is not an absolute path", svc.Run[0])
			}
		}
		checkEnv(c, field+".env", svc.Env)
		if svc.Image == "" {
			checkUser(c, field+".user", svc.User)
		}
		s.checkContainer(c, field, svc)
		switch svc.Restart {
		case RestartOnFailure, RestartAlways, RestartNo:
			if svc.Unit != "" {
				c.addf(field+".restart", "restart is for run and container services: a unit keeps its own Restart=")
			}
		case "":
		default:
			c.addf(field+".restart", "unknown restart policy %q: want on-failure, always or no", svc.Restart)
		}
		seen := map[string]bool{}
		for i, dep := range svc.After {
			f := fmt.Sprintf("%s.after[%d]", field, i)
			switch _, ok := s.Services[dep]; {
			case !ok:
				c.addf(f, "unknown service %q", dep)
			case seen[dep]:
				c.addf(f, "service %q listed twice", dep)
			}
			seen[dep] = true
		}
		s.checkPorts(c, name, hostPorts)
		checkHealth(c, field+".health", svc.Health)
	}
	for _, cyc := range s.cycles() {
		c.addf("services."+cyc[0]+".after", "dependency cycle: %s (each waits for the next)", strings.Join(cyc, " -> "))
	}
}

func (s *Stack) checkPorts(c *checker, name string, hostPorts map[int]string) {
	names := map[string]bool{}
	guests := map[int]bool{}
	for i, p := range s.Services[name].Ports {
		field := fmt.Sprintf("services.%s.ports[%d]", name, i)
		if p.Name != "" {
			if !isLabel(p.Name) {
				c.addf(field+".name", "invalid port name %q: want a lowercase DNS label such as %q", p.Name, "http")
			} else if names[p.Name] {
				c.addf(field+".name", "port name %q used twice in service %s", p.Name, name)
			}
			names[p.Name] = true
		}
		if checkPort(c, field+".guest", p.Guest) {
			if guests[p.Guest] {
				c.addf(field+".guest", "guest port %d forwarded twice", p.Guest)
			}
			guests[p.Guest] = true
		}
		if p.Host == p.Guest && (p.Guest < 1 || p.Guest > 65535) {
			continue // reported as the guest port
		}
		if !checkPort(c, field+".host", p.Host) {
			continue
		}
		if other, dup := hostPorts[p.Host]; dup {
			c.addf(field+".host", "host port %d already used by %s", p.Host, other)
		} else {
			hostPorts[p.Host] = field
		}
	}
}

func checkHealth(c *checker, field string, h Health) {
	set := 0
	if h.TCP != 0 {
		set++
		checkPort(c, field+".tcp", h.TCP)
	}
	if h.HTTP != nil {
		set++
		checkPort(c, field+".http.port", h.HTTP.Port)
		if !strings.HasPrefix(h.HTTP.Path, "/") {
			c.addf(field+".http.path", "path %q must start with /", h.HTTP.Path)
		}
		if h.HTTP.Status < 100 || h.HTTP.Status > 599 {
			c.addf(field+".http.status", "status %d out of range: want 100 to 599", h.HTTP.Status)
		}
	}
	if len(h.Exec) > 0 {
		set++
		if h.Exec[0] == "" {
			c.addf(field+".exec[0]", "empty command")
		}
	}
	switch {
	case set == 0:
		c.addf(field, "required: set one of tcp, http or exec, so emu knows when the service is up")
	case set > 1:
		c.addf(field, "set only one of tcp, http and exec")
	}
	if h.Timeout <= 0 {
		c.addf(field+".timeout", "timeout %s must be positive", h.Timeout.D())
	}
}

// cycles finds the dependency cycles among services, each as the path that
// closes it (a -> b -> a), starting from its smallest name.
func (s *Stack) cycles() [][]string {
	const (
		unseen = iota
		active
		done
	)
	state := map[string]int{}
	var stack []string
	var found [][]string
	var visit func(string)
	visit = func(n string) {
		state[n] = active
		stack = append(stack, n)
		for _, dep := range s.Services[n].After {
			if _, ok := s.Services[dep]; !ok {
				continue
			}
			switch state[dep] {
			case unseen:
				visit(dep)
			case active:
				i := len(stack) - 1
				for stack[i] != dep {
					i--
				}
				found = append(found, rotate(stack[i:]))
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
	}
	for _, n := range s.ServiceNames() {
		if state[n] == unseen {
			visit(n)
		}
	}
	return found
}

func (s *Stack) checkBake(c *checker) {
	names := map[string]int{}
	for i, st := range s.Bake {
		field := "bake[" + strconv.Itoa(i) + "]"
		switch j, dup := names[st.Name]; {
		case st.Name == "":
			c.addf(field+".name", "required: a name for the step, such as %q", "migrate")
		case !stepNameRe.MatchString(st.Name):
			c.addf(field+".name", "invalid step name %q: want letters, digits, '.', '_' and '-'", st.Name)
		case dup:
			c.addf(field+".name", "step name %q already used by bake[%d]", st.Name, j)
		default:
			names[st.Name] = i
		}
		switch {
		case st.Container != "":
			checkImageRef(c, s, field+".container", st.Container)
			checkVolumes(c, field+".volumes", st.Volumes)
			checkContainerUser(c, field+".user", st.User)
		case len(st.Run) == 0:
			c.addf(field+".run", "required: the command to run, such as [/usr/local/bin/app, migrate]")
		case st.Run[0] == "":
			c.addf(field+".run[0]", "empty command")
		}
		if st.Container == "" {
			checkUser(c, field+".user", st.User)
			if st.Volumes != nil {
				c.addf(field+".volumes", "volumes are for container steps: set container")
			}
		}
		checkEnv(c, field+".env", st.Env)
		if st.Dir != "" {
			checkGuestPath(c, field+".dir", st.Dir)
		}
		if st.Timeout <= 0 {
			c.addf(field+".timeout", "timeout %s must be positive", st.Timeout.D())
		}
	}
}

func (s *Stack) checkSlim(c *checker) {
	for i, p := range s.Slim.Remove {
		field := fmt.Sprintf("slim.remove[%d]", i)
		if !checkGuestPath(c, field, p) {
			continue
		}
		if p == "/" {
			c.addf(field, "refusing to remove the root directory")
			continue
		}
		for _, r := range ReservedPaths {
			switch {
			case p == r:
				c.addf(field, "refusing to remove %s: emu needs it", p)
			case within(p, r):
				c.addf(field, "refusing to remove %s: emu needs %s", p, r)
			case within(r, p):
				c.addf(field, "refusing to remove %s: it holds %s, which emu needs", p, r)
			}
		}
	}
}

// rotate returns the cycle starting and ending at its smallest name.
func rotate(cyc []string) []string {
	m := 0
	for i, n := range cyc {
		if n < cyc[m] {
			m = i
		}
	}
	out := append(append([]string(nil), cyc[m:]...), cyc[:m]...)
	return append(out, out[0])
}
