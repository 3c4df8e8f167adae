package doctor

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"
)

// A /dev/kvm this user cannot open is a warning with a fix: guests run,
// under TCG.
func TestKVMHint(t *testing.T) {
	const groups = "root:x:0:\nkvm:x:993:bob\nalice:x:1000:\n"
	perm := &fs.PathError{Op: "open", Path: "/dev/kvm", Err: fs.ErrPermission}
	for _, tc := range []struct {
		name    string
		account *Account
		files   map[string]string
		open    error
		opts    Options
		detail  string // in Detail
		fix     string // the whole Fix
	}{
		{"not in group kvm", alice, map[string]string{"/etc/group": groups}, perm, Options{},
			"group kvm may open it, alice is not in it", "sudo usermod -aG kvm alice, then log in again to use KVM"},
		{"added, not logged in again", alice, map[string]string{"/etc/group": "kvm:x:993:bob,alice\n"}, perm, Options{},
			"alice is in group kvm, but this login started before that", "log in again (or run: newgrp kvm) to use KVM"},
		{"in group kvm, still denied", &Account{UID: 1000, Name: "alice", Groups: []int{1000, 993}}, map[string]string{"/etc/group": groups}, perm, Options{},
			"though this process is in group kvm", "ls -l /dev/kvm should show crw-rw---- root kvm (udev's rule sets it; check /dev is managed by udev)"},
		{"no group kvm", alice, map[string]string{"/etc/group": "root:x:0:\n"}, perm, Options{},
			"no group kvm grants it", ""},
		{"no /dev/kvm", alice, nil, &fs.PathError{Op: "open", Path: "/dev/kvm", Err: fs.ErrNotExist}, Options{},
			"no /dev/kvm: the CPU's virtualization is off", "sudo modprobe kvm_intel (or kvm_amd); if /dev/kvm is still missing, enable VT-x/AMD-V (or nested virtualization)"},
		{"opens: the probe decided", alice, nil, nil, Options{}, "probe guest failed (guests run slower; timeouts x8)", ""},
		{"other error", alice, nil, errors.New("device busy"), Options{}, "timeouts x8", ""},
		{"tcg by --accel", alice, nil, perm, Options{Accel: "tcg"}, "timeouts x8", ""},
		{"foreign guest", alice, nil, perm, Options{GuestArch: "arm64"}, "timeouts x8", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			if o.GuestArch == "" {
				o.GuestArch = "amd64"
			}
			o.HostArch, o.GOOS, o.Account = "amd64", "linux", tc.account
			o.LookPath, o.Choose, o.ReadFile = fakeLookPath(all...), tcgChoice, fakeFiles(tc.files)
			o.OpenRW = func(string) error { return tc.open }
			r := Run(context.Background(), fakeHost(o))
			c := check(t, r, "accelerator")
			if !c.OK || !c.Warn || !strings.Contains(c.Detail, tc.detail) || c.Fix != tc.fix {
				t.Errorf("check = %+v; want a warning with %q and fix %q", c, tc.detail, tc.fix)
			}
			if !r.OK() {
				t.Errorf("report not OK: %+v", r.Missing())
			}
			var b strings.Builder
			r.Write(&b)
			if tc.fix != "" && !strings.Contains(b.String(), "\naccelerator: "+tc.fix+"\n") {
				t.Errorf("Write output lacks the fix:\n%s", b.String())
			}
		})
	}
}
