package doctor

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/command"
)

func TestMke2fs(t *testing.T) {
	const bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n"
	const trixie = "VERSION_CODENAME=trixie\n"
	version := func(v string) map[string]string {
		return map[string]string{"mke2fs -V": "mke2fs " + v + " (1-Jan-2025)\n"}
	}
	backportsRoot := "apt-get install -t bookworm-backports e2fsprogs libarchive13 " +
		"(bookworm-backports must be among apt's sources: echo 'deb http://deb.debian.org/debian bookworm-backports main' | " +
		"tee /etc/apt/sources.list.d/backports.list; apt-get update)"
	backportsUser := "sudo apt-get install -t bookworm-backports e2fsprogs libarchive13 " +
		"(bookworm-backports must be among apt's sources: echo 'deb http://deb.debian.org/debian bookworm-backports main' | " +
		"sudo tee /etc/apt/sources.list.d/backports.list; sudo apt-get update)"
	for _, tc := range []struct {
		name     string
		account  *Account
		osr      string
		outputs  map[string]string
		have     []string // in PATH
		ok       bool
		detail   string
		fix      string // the version check's whole Fix
		fixCmd   string
		failures string
	}{
		{"backports", nil, bookworm, version("1.47.2"), []string{"mke2fs"}, true, "1.47.2 (makes the disk from the root tarball)", "", "", ""},
		{"exactly the minimum", nil, bookworm, version("1.47.1"), []string{"mke2fs"}, true, "1.47.1", "", "", ""},
		{"newer", nil, trixie, version("1.48.0"), []string{"mke2fs"}, true, "1.48.0", "", "", ""},
		{"bookworm, root", nil, bookworm, version("1.47.0"), []string{"mke2fs"}, true,
			"1.47.0 is older than 1.47.1: its -d does not read the root tarball; root builds unpack the tree first", backportsRoot, "", ""},
		{"bookworm, a user", alice, bookworm, version("1.47.0"), []string{"mke2fs"}, false, "its -d does not read the root tarball", backportsUser, "", "mke2fs version"},
		{"elsewhere", alice, "", version("1.46.5"), []string{"mke2fs"}, false, "1.46.5 is older",
			"install e2fsprogs 1.47.1 or newer (Debian 13 has 1.47.2) and libarchive (libarchive.so.13)", "", "mke2fs version"},
		{"mke2fs -V fails", nil, bookworm, nil, []string{"mke2fs"}, false, "/usr/bin/mke2fs -V: mke2fs -V: executable file not found", "", "", "mke2fs version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mke2fsReport(fakeHost(Options{GOOS: "linux", Account: tc.account,
				ReadFile: fakeFiles(map[string]string{"/etc/os-release": tc.osr}),
				LookPath: fakeLookPath(tc.have...), Command: fakeCommand(tc.outputs)}))
			c := check(t, r, "mke2fs version")
			if c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check = %+v; want ok=%v, detail with %q", c, tc.ok, tc.detail)
			}
			if c.Fix != tc.fix {
				t.Errorf("Fix = %q\nwant  %q", c.Fix, tc.fix)
			}
			if got := r.FixCommand(); got != tc.fixCmd {
				t.Errorf("FixCommand = %q, want %q", got, tc.fixCmd)
			}
			if got := checkNames(r.Missing()); got != tc.failures {
				t.Errorf("failed %q, want %q", got, tc.failures)
			}
			if (r.Err() == nil) != tc.ok {
				t.Errorf("Err = %v", r.Err())
			}
			// Root with an old mke2fs unpacks the tree: no libarchive needed.
			if tc.account == nil && hasCheck(r, "libarchive") == c.Warn {
				t.Errorf("libarchive checked: %v, with the version check %+v", hasCheck(r, "libarchive"), c)
			}
		})
	}
}

func TestLibarchive(t *testing.T) {
	const ldconfig = "\t1386 libs found in cache `/etc/ld.so.cache'\n" +
		"\tlibarchive.so.13 (libc6,x86-64) => /opt/lib/libarchive.so.13\n" +
		"\tlibarchive.so (libc6,x86-64) => /opt/lib/libarchive.so\n"
	for _, tc := range []struct {
		name    string
		arch    string
		exists  []string
		ldcache string // ldconfig -p's output; "" means ldconfig is missing
		osr     string
		ok      bool
		detail  string
		fixCmd  string
	}{
		{"amd64", "amd64", []string{"/usr/lib/x86_64-linux-gnu/libarchive.so.13"}, "", "", true, "/usr/lib/x86_64-linux-gnu/libarchive.so.13", ""},
		{"arm64", "arm64", []string{"/lib/aarch64-linux-gnu/libarchive.so.13"}, "", "", true, "/lib/aarch64-linux-gnu/libarchive.so.13", ""},
		{"lib64", "amd64", []string{"/usr/lib64/libarchive.so.13"}, "", "", true, "/usr/lib64/libarchive.so.13", ""},
		{"ld.so.cache", "amd64", nil, ldconfig, "", true, "/opt/lib/libarchive.so.13", ""},
		{"missing on bookworm", "amd64", nil, "\t0 libs found\n", "VERSION_CODENAME=bookworm\n", false, "libarchive.so.13 not found",
			"sudo apt-get install -y --no-install-recommends libarchive13"},
		{"missing on trixie", "amd64", []string{"/usr/lib/x86_64-linux-gnu/libarchive.so"}, "", "VERSION_CODENAME=trixie\n", false, "mke2fs -d loads it",
			"sudo apt-get install -y --no-install-recommends libarchive13t64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			have := []string{"mke2fs"}
			if tc.ldcache != "" {
				have = append(have, "ldconfig")
			}
			r := mke2fsReport(fakeHost(Options{GOOS: "linux", HostArch: tc.arch, Account: alice,
				ReadFile: fakeFiles(map[string]string{"/etc/os-release": tc.osr}), LookPath: fakeLookPath(have...),
				Exists:  fakeExists(tc.exists...),
				Command: fakeCommand(map[string]string{"mke2fs -V": "mke2fs 1.47.2 (1-Jan-2025)", "ldconfig -p": tc.ldcache}),
			}))
			c := check(t, r, "libarchive")
			if c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check = %+v; want ok=%v, detail with %q", c, tc.ok, tc.detail)
			}
			if got := r.FixCommand(); got != tc.fixCmd {
				t.Errorf("FixCommand = %q, want %q", got, tc.fixCmd)
			}
		})
	}
}

func hasCheck(r Report, name string) bool {
	for _, c := range r.Checks {
		if c.Name == name {
			return true
		}
	}
	return false
}

// A user's PATH on Debian lacks /usr/sbin and /sbin, where mke2fs is.
func TestLookSbin(t *testing.T) {
	look := func(have ...string) func(string) (string, error) {
		return func(name string) (string, error) {
			for _, h := range have {
				if h == name {
					return h, nil
				}
			}
			return "", fs.ErrNotExist
		}
	}
	for _, tc := range []struct {
		have []string
		want string
	}{
		{[]string{"mke2fs", "/sbin/mke2fs"}, "mke2fs"},
		{[]string{"/sbin/mke2fs"}, "/sbin/mke2fs"},
		{[]string{"/usr/sbin/mke2fs", "/sbin/mke2fs"}, "/usr/sbin/mke2fs"},
	} {
		if got, err := command.LookSbin(look(tc.have...), "mke2fs"); got != tc.want || err != nil {
			t.Errorf("lookSbin with %v = %q, %v; want %q", tc.have, got, err, tc.want)
		}
	}
	if _, err := command.LookSbin(look(), "mke2fs"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lookSbin with nothing: error %v", err)
	}
	// A user's doctor finds mkfs.ext4 in /sbin too.
	r := Run(context.Background(), fakeHost(Options{NeedBuild: true, GuestArch: "amd64", GOOS: "linux",
		LookPath: fakeLookPath("qemu-system-x86_64", "qemu-img", "zstd", "tar", "mmdebstrap", "/sbin/mkfs.ext4", "/sbin/mke2fs"), Choose: kvmChoice}))
	if !r.OK() || check(t, r, "mkfs.ext4").Detail != "/sbin/mkfs.ext4" {
		t.Errorf("checks %+v", r.Checks)
	}
}

// mke2fsReport is the mke2fs checks alone, as Run would report them.
func mke2fsReport(opts Options) Report {
	opts = opts.withDefaults()
	return Report{GOOS: opts.GOOS, sudo: opts.sudo(), Checks: mke2fsChecks(context.Background(), opts)}
}
