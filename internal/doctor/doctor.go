// Package doctor checks that this host can build and run emu images, and says
// how to fix what is missing.
package doctor

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/qemu"
)

// Check is one line of the report.
type Check struct {
	Name   string
	OK     bool
	Warn   bool // OK, but worth a look (low disk space, tcg fallback)
	Detail string
	// Fix is the command that repairs it, e.g.
	// "apt-get install -y --no-install-recommends qemu-system-x86".
	Fix string
	// pkg is the package Fix installs; Write merges them into one command.
	pkg string
}

// Report is the outcome of Run.
type Report struct {
	Checks []Check
	Accel  accel.Choice
	GOOS   string
	// sudo prefixes FixCommand: "sudo " for a user who is not root.
	sudo string
}

// Options says what to check and injects the host.
type Options struct {
	Dir       string // where images go: its free space is checked; "" skips
	NeedBuild bool   // also check the build tools (mmdebstrap, mkfs.ext4)
	GuestArch string // "" means runtime.GOARCH
	Accel     string // --accel override, passed to Choose

	GOOS     string                       // "" means runtime.GOOS
	HostArch string                       // "" means runtime.GOARCH
	LookPath func(string) (string, error) // nil means exec.LookPath
	// ReadFile reads binfmt_misc's entries and the handlers' configs;
	// nil means os.ReadFile.
	ReadFile  func(string) ([]byte, error)
	FreeSpace func(dir string) (int64, error) // nil means statfs
	Choose    func(ctx context.Context, guestArch, override string) (accel.Choice, error)

	// Account is who runs emu: anyone but root builds the tree in a user
	// namespace. nil means this process's (CurrentAccount).
	Account *Account
	// Exists reports whether a file is there (libarchive); nil means
	// os.Stat succeeds.
	Exists func(path string) bool
	// OpenRW opens a file read-write and closes it (/dev/kvm); nil means
	// os.OpenFile.
	OpenRW func(path string) error
	// Privilege says how a program may act as root: "setuid root", "file
	// capabilities" or "" for neither (newuidmap); nil reads the file's
	// mode, owner and security.capability.
	Privilege func(path string) (string, error)
	// Command runs a program and returns its combined output (mke2fs -V,
	// ldconfig -p); nil means command.Exec.
	Command func(ctx context.Context, name string, args ...string) ([]byte, error)
}

// withDefaults fills what opts leaves unset with the real host.
func (opts Options) withDefaults() Options {
	if opts.GOOS == "" {
		opts.GOOS = runtime.GOOS
	}
	if opts.HostArch == "" {
		opts.HostArch = runtime.GOARCH
	}
	if opts.GuestArch == "" {
		opts.GuestArch = opts.HostArch
	}
	if opts.ReadFile == nil {
		opts.ReadFile = os.ReadFile
	}
	if opts.LookPath == nil {
		opts.LookPath = exec.LookPath
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = freeSpace
	}
	if opts.Choose == nil {
		opts.Choose = accel.Choose
	}
	if opts.Account == nil {
		a := CurrentAccount()
		opts.Account = &a
	}
	if opts.Exists == nil {
		opts.Exists = func(p string) bool { _, err := os.Stat(p); return err == nil }
	}
	if opts.OpenRW == nil {
		opts.OpenRW = openRW
	}
	if opts.Privilege == nil {
		opts.Privilege = privilege
	}
	if opts.Command == nil {
		opts.Command = command.Exec{}.Run
	}
	return opts
}

// sudo is what goes before a command that needs root: "sudo " unless
// this is root already (or a Mac, whose fixes are brew's).
func (opts Options) sudo() string {
	if opts.GOOS != "linux" || opts.Account.UID == 0 {
		return ""
	}
	return "sudo "
}

func openRW(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// Disk space thresholds for Dir.
const (
	WarnBelow = 10 << 30
	FailBelow = 3 << 30
)

// tool is a program emu runs and where it comes from.
type tool struct {
	name, debPkg, brewPkg, why string
	build                      bool
}

// Run performs every check. It never fails: problems are Checks.
func Run(ctx context.Context, opts Options) Report {
	opts = opts.withDefaults()
	r := Report{GOOS: opts.GOOS, sudo: opts.sudo()}

	qemuBin, err := qemu.Binary(opts.GuestArch)
	if err != nil {
		r.Checks = append(r.Checks, Check{Name: "guest arch", Detail: err.Error()})
		return r
	}
	qemuDeb := "qemu-system-x86"
	if opts.GuestArch == "arm64" {
		qemuDeb = "qemu-system-arm"
	}
	tools := []tool{
		{name: qemuBin, debPkg: qemuDeb, brewPkg: "qemu", why: "runs guests"},
		{name: "qemu-img", debPkg: "qemu-utils", brewPkg: "qemu", why: "creates and converts disks"},
		// Build tools: a bundle's disk unpacks without them (in-process),
		// only faster with them.
		{name: "zstd", debPkg: "zstd", why: "packs disks, unpacks root filesystem tarballs", build: true},
		{name: "tar", debPkg: "tar", why: "packs disks, unpacks root filesystem tarballs", build: true},
		{name: "mmdebstrap", debPkg: "mmdebstrap", why: "builds Debian root trees", build: true},
		{name: "mkfs.ext4", debPkg: "e2fsprogs", why: "makes the root filesystem", build: true},
	}
	for _, t := range tools {
		// Builds run on Linux only; a Mac runs bundles built there.
		if t.build && (!opts.NeedBuild || opts.GOOS == "darwin") {
			continue
		}
		r.Checks = append(r.Checks, lookTool(opts, t))
	}
	if opts.NeedBuild && opts.GOOS == "linux" {
		r.Checks = append(r.Checks, rootlessChecks(opts)...)
		r.Checks = append(r.Checks, mke2fsChecks(ctx, opts)...)
	}

	if opts.NeedBuild && opts.GOOS == "linux" && opts.GuestArch != opts.HostArch {
		// mmdebstrap checks with arch-test that the host runs the
		// architecture's programs before it makes a foreign tree.
		r.Checks = append(r.Checks, lookTool(opts, tool{name: "arch-test", debPkg: "arch-test", why: "mmdebstrap needs it for a tree of another architecture"}))
		r.Checks = append(r.Checks, binfmtCheck(opts))
	}
	if opts.Dir != "" {
		r.Checks = append(r.Checks, diskCheck(opts))
	}

	c := Check{Name: "accelerator"}
	choice, err := opts.Choose(ctx, opts.GuestArch, opts.Accel)
	if err != nil {
		c.Detail = err.Error()
	} else {
		r.Accel = choice
		c.OK = true
		c.Warn = choice.Accel == qemu.TCG
		c.Detail = choice.Reason
		if c.Warn {
			c.Detail += fmt.Sprintf(" (guests run slower; timeouts x%g)", choice.TimeoutScale)
			kvmHint(opts, &c)
		}
	}
	r.Checks = append(r.Checks, c)
	return r
}

func lookTool(opts Options, t tool) Check {
	c := Check{Name: t.name}
	if p, err := command.LookSbin(opts.LookPath, t.name); err == nil {
		c.OK, c.Detail = true, p
		return c
	}
	c.Detail = "not found in PATH (" + t.why + ")"
	switch {
	case opts.GOOS == "darwin":
		c.pkg = t.brewPkg
		c.Fix = "brew install " + t.brewPkg
	default:
		c.pkg = t.debPkg
		c.Fix = opts.sudo() + aptInstall(t.debPkg)
	}
	return c
}

// binfmtHandlers are the qemu-user handlers that run a foreign guest's
// programs on this host, by guest architecture.
var binfmtHandlers = map[string]string{"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}

// binfmtCheck: a guest tree for another architecture is made by running
// its programs (dpkg's maintainer scripts) on this host, through
// qemu-user-static's binfmt_misc handler. The F flag matters: the kernel
// opens the interpreter when the handler is registered, so it runs
// inside the chroot that lacks it.
func binfmtCheck(opts Options) Check {
	name := binfmtHandlers[opts.GuestArch]
	c := Check{Name: "binfmt " + name}
	entry := "/proc/sys/fs/binfmt_misc/" + name
	conf := "/usr/lib/binfmt.d/" + name + ".conf"
	why := " (runs the " + opts.GuestArch + " tree's programs while it is made)"
	b, err := opts.ReadFile(entry)
	if err != nil {
		if _, cerr := opts.ReadFile(conf); cerr != nil {
			c.Detail = "no handler registered and qemu-user-static not installed" + why
			c.pkg, c.Fix = "qemu-user-static", aptInstall("qemu-user-static")
			return c
		}
		c.Detail = "qemu-user-static is installed but its handler is not registered" + why
		c.Fix = "systemctl restart systemd-binfmt, or without systemd: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; " +
			"cat " + conf + " > /proc/sys/fs/binfmt_misc/register"
		return c
	}
	text := string(b)
	switch {
	case !strings.HasPrefix(text, "enabled"):
		c.Detail = entry + " is disabled" + why
		c.Fix = "echo 1 > " + entry
	case !strings.Contains(flagsLine(text), "F"):
		c.Detail = entry + " lacks the F flag: the interpreter is not found inside the tree" + why
		c.Fix = "echo -1 > " + entry + "; cat " + conf + " > /proc/sys/fs/binfmt_misc/register (qemu-user-static's handler has it)"
	default:
		c.OK = true
		c.Detail = strings.TrimSpace(strings.TrimPrefix(interpreterLine(text), "interpreter "))
	}
	return c
}

func flagsLine(entry string) string       { return lineWith(entry, "flags:") }
func interpreterLine(entry string) string { return lineWith(entry, "interpreter ") }

func lineWith(text, prefix string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func aptInstall(pkgs ...string) string {
	return "apt-get install -y --no-install-recommends " + strings.Join(pkgs, " ")
}

func diskCheck(opts Options) Check {
	c := Check{Name: "disk space"}
	free, err := opts.FreeSpace(opts.Dir)
	if err != nil {
		c.Detail = fmt.Sprintf("%s: %v", opts.Dir, err)
		return c
	}
	c.Detail = fmt.Sprintf("%s free in %s", gib(free), opts.Dir)
	switch {
	case free < FailBelow:
		c.Detail += fmt.Sprintf(", need at least %s", gib(FailBelow))
		c.Fix = "free space in " + opts.Dir + ", or point EMU_HOME at a larger disk"
	case free < WarnBelow:
		c.OK, c.Warn = true, true
		c.Detail += fmt.Sprintf(", under %s: builds may run out", gib(WarnBelow))
	default:
		c.OK = true
	}
	return c
}

func gib(n int64) string { return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30)) }

// freeSpace is the space available to us on dir's file system; a dir that
// does not exist yet is measured at its nearest existing parent.
func freeSpace(dir string) (int64, error) {
	dir = filepath.Clean(dir)
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(dir)
		if !os.IsNotExist(err) || parent == dir {
			return 0, fmt.Errorf("statfs %s: %w", dir, err)
		}
		dir = parent
	}
}

// OK reports whether nothing failed; warnings are OK.
func (r Report) OK() bool { return len(r.Missing()) == 0 }

// Missing lists the failed checks.
func (r Report) Missing() []Check {
	var m []Check
	for _, c := range r.Checks {
		if !c.OK {
			m = append(m, c)
		}
	}
	return m
}

// FixCommand merges the package installs of every failed check into one
// command line; "" when there is nothing to install.
func (r Report) FixCommand() string {
	seen := map[string]bool{}
	var pkgs []string
	for _, c := range r.Missing() {
		if c.pkg != "" && !seen[c.pkg] {
			seen[c.pkg] = true
			pkgs = append(pkgs, c.pkg)
		}
	}
	if len(pkgs) == 0 {
		return ""
	}
	sort.Strings(pkgs)
	if r.GOOS == "darwin" {
		return "brew install " + strings.Join(pkgs, " ")
	}
	return r.sudo + aptInstall(pkgs...)
}

// fixes are the fixes FixCommand does not cover, "name: fix", for the
// failed checks and the warnings that have one (a /dev/kvm this user
// cannot open).
func (r Report) fixes() []string {
	var f []string
	for _, c := range r.Checks {
		if c.Fix != "" && c.pkg == "" && (!c.OK || c.Warn) {
			f = append(f, c.Name+": "+c.Fix)
		}
	}
	return f
}

// Err is nil when nothing failed, else a *MissingError.
func (r Report) Err() error {
	if r.OK() {
		return nil
	}
	return &MissingError{Report: r}
}

// MissingError is a Report with failed checks, as an error: what a build
// step returns when the host cannot do it.
type MissingError struct{ Report Report }

func (e *MissingError) Error() string {
	var s []string
	for _, c := range e.Report.Missing() {
		s = append(s, c.Name+": "+c.Detail)
	}
	return "the host lacks what emu needs: " + strings.Join(s, "; ")
}

// HintText is the commands that fix it, one a line (the CLI prints it).
func (e *MissingError) HintText() string {
	var s []string
	if cmd := e.Report.FixCommand(); cmd != "" {
		s = append(s, cmd)
	}
	return strings.Join(append(s, e.Report.fixes()...), "\n")
}

// Write renders the report as a table, then the fixes for what failed.
func (r Report) Write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range r.Checks {
		status := "ok"
		switch {
		case !c.OK:
			status = "MISSING"
		case c.Warn:
			status = "warn"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", status, c.Name, c.Detail)
	}
	tw.Flush()
	cmd, fixes := r.FixCommand(), r.fixes()
	if cmd == "" && len(fixes) == 0 {
		return
	}
	fmt.Fprintln(w)
	if cmd != "" {
		fmt.Fprintf(w, "to install what is missing:\n  %s\n", cmd)
	}
	for _, f := range fixes {
		fmt.Fprintln(w, f)
	}
}
