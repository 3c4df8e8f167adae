package doctor

import (
	"errors"
	"io/fs"
	"slices"
	"strconv"
	"strings"
)

const kvmDevice = "/dev/kvm"

// kvmHint adds to the accelerator's TCG warning why /dev/kvm is out of
// reach and how to reach it. It stays a warning: guests run under TCG,
// only slower. It says nothing when /dev/kvm opens (then the probe guest
// decided), for a foreign guest, or when --accel chose.
func kvmHint(opts Options, c *Check) {
	if opts.GOOS != "linux" || opts.GuestArch != opts.HostArch || opts.Accel != "" {
		return
	}
	err := opts.OpenRW(kvmDevice)
	switch {
	case err == nil:
		return
	case errors.Is(err, fs.ErrNotExist):
		c.Detail += "; no " + kvmDevice + ": the CPU's virtualization is off in the firmware, " +
			"the kvm module is not loaded, or this is a VM without nested virtualization"
		if opts.HostArch == "amd64" {
			c.Fix = "sudo modprobe kvm_intel (or kvm_amd); if " + kvmDevice + " is still missing, enable VT-x/AMD-V (or nested virtualization)"
		}
		return
	case !errors.Is(err, fs.ErrPermission):
		return
	}
	a := opts.Account
	gid, members, ok := group(opts, "kvm")
	switch {
	case !ok:
		c.Detail += "; no group kvm grants it"
	case slices.Contains(a.Groups, gid):
		c.Detail += "; though this process is in group kvm"
		c.Fix = "ls -l " + kvmDevice + " should show crw-rw---- root kvm (udev's rule sets it; check /dev is managed by udev)"
	case a.Name != "" && slices.Contains(members, a.Name):
		c.Detail += "; " + a.Name + " is in group kvm, but this login started before that"
		c.Fix = "log in again (or run: newgrp kvm) to use KVM"
	default:
		name := a.Name
		if name == "" {
			name = strconv.Itoa(a.UID)
		}
		c.Detail += "; group kvm may open it, " + name + " is not in it"
		c.Fix = "sudo usermod -aG kvm " + name + ", then log in again to use KVM"
	}
}

// group finds a group's id and members in /etc/group.
func group(opts Options, name string) (gid int, members []string, ok bool) {
	b, err := opts.ReadFile("/etc/group")
	if err != nil {
		return 0, nil, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(strings.TrimSpace(l), ":")
		if len(f) != 4 || f[0] != name {
			continue
		}
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			return 0, nil, false
		}
		if f[3] != "" {
			members = strings.Split(f[3], ",")
		}
		return gid, members, true
	}
	return 0, nil, false
}
