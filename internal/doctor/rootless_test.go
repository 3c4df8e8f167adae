package doctor

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var alice = &Account{UID: 1000, Name: "alice", Groups: []int{1000}}

// debianSysctls are Debian 12's defaults.
var debianSysctls = map[string]string{
	"/proc/sys/kernel/unprivileged_userns_clone": "1\n",
	"/proc/sys/user/max_user_namespaces":         "96365\n",
}

// merge is a copy of files with more added.
func merge(files ...map[string]string) map[string]string {
	m := map[string]string{}
	for _, f := range files {
		for k, v := range f {
			m[k] = v
		}
	}
	return m
}

// checkNames are cs's names, space-separated.
func checkNames(cs []Check) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return strings.Join(n, " ")
}

// check finds the check named name, failing the test when there is none.
func check(t *testing.T, r Report, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, r.Checks)
	return Check{}
}

func TestUserNamespaces(t *testing.T) {
	const clone = "/proc/sys/kernel/unprivileged_userns_clone"
	const maxNS = "/proc/sys/user/max_user_namespaces"
	const apparmor = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
	for _, tc := range []struct {
		name   string
		files  map[string]string
		ok     bool
		detail string // in Detail
		fix    string // the whole Fix
	}{
		{"debian 12", debianSysctls, true, "user.max_user_namespaces=96365", ""},
		{"no debian switch", map[string]string{maxNS: "100"}, true, "allowed", ""},
		{"ubuntu, apparmor allows", map[string]string{maxNS: "100", apparmor: "0"}, true, "allowed", ""},
		{"debian switch off", merge(debianSysctls, map[string]string{clone: "0\n"}), false, "kernel.unprivileged_userns_clone is 0",
			"sudo sysctl -w kernel.unprivileged_userns_clone=1; to keep it after a reboot: " +
				"echo kernel.unprivileged_userns_clone=1 | sudo tee /etc/sysctl.d/90-emu-userns.conf"},
		{"max zero", map[string]string{maxNS: "0"}, false, "user.max_user_namespaces is 0",
			"sudo sysctl -w user.max_user_namespaces=15000; to keep it after a reboot: " +
				"echo user.max_user_namespaces=15000 | sudo tee /etc/sysctl.d/90-emu-userns.conf"},
		{"ubuntu apparmor", map[string]string{maxNS: "100", apparmor: "1"}, false, "AppArmor strips the capabilities",
			"sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0; to keep it after a reboot: " +
				"echo kernel.apparmor_restrict_unprivileged_userns=0 | sudo tee /etc/sysctl.d/90-emu-userns.conf " +
				"(or, instead of kernel.apparmor_restrict_unprivileged_userns=0, an AppArmor profile for mmdebstrap with the userns rule)"},
		{"two at once", map[string]string{clone: "0", maxNS: "0"}, false, "is 0: users may not make user namespaces; user.max_user_namespaces is 0",
			"sudo sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000; to keep it after a reboot: " +
				"printf '%s\\n' kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000 | sudo tee /etc/sysctl.d/90-emu-userns.conf"},
		{"kernel without user namespaces", map[string]string{}, false, "the kernel has no user namespaces",
			"boot a kernel built with CONFIG_USER_NS=y (Debian's and Ubuntu's are)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := usernsCheck(fakeHost(Options{Account: alice, GOOS: "linux", ReadFile: fakeFiles(tc.files)}).withDefaults())
			if c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check = %+v; want ok=%v, detail with %q", c, tc.ok, tc.detail)
			}
			if c.Fix != tc.fix {
				t.Errorf("Fix = %q\nwant  %q", c.Fix, tc.fix)
			}
		})
	}
}

func TestIDMap(t *testing.T) {
	for _, tc := range []struct {
		name    string
		have    []string
		how     string
		err     error
		ok      bool
		detail  string
		fix     string // in Fix
		fixCmd  string // the merged FixCommand
		missing string // the failed checks' names
	}{
		{"setuid", []string{"newuidmap", "newgidmap"}, "setuid root", nil, true, "/usr/bin/newuidmap (setuid root)", "", "", ""},
		{"capabilities", []string{"newuidmap", "newgidmap"}, "file capabilities", nil, true, "(file capabilities)", "", "", ""},
		{"not installed", nil, "", nil, false, "not found in PATH", "", "sudo apt-get install -y --no-install-recommends uidmap", "newuidmap newgidmap"},
		{"neither setuid nor capabilities", []string{"newuidmap", "newgidmap"}, "", nil, false, "neither setuid root nor has file capabilities",
			"sudo apt-get install --reinstall uidmap, or: sudo chmod u+s /usr/bin/newuidmap", "", "newuidmap newgidmap"},
		{"stat fails", []string{"newuidmap", "newgidmap"}, "", errors.New("stat /usr/bin/newuidmap: permission denied"), false, "permission denied", "", "", "newuidmap newgidmap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rootlessReport(fakeHost(Options{
				Account: alice, GOOS: "linux", ReadFile: fakeFiles(merge(debianSysctls, subids("alice:100000:65536"))),
				LookPath:  fakeLookPath(tc.have...),
				Privilege: func(string) (string, error) { return tc.how, tc.err },
			}))
			c := check(t, r, "newuidmap")
			if c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) || !strings.Contains(c.Fix, tc.fix) {
				t.Errorf("check = %+v; want ok=%v, detail with %q, fix with %q", c, tc.ok, tc.detail, tc.fix)
			}
			if got := r.FixCommand(); got != tc.fixCmd {
				t.Errorf("FixCommand = %q, want %q", got, tc.fixCmd)
			}
			if got := checkNames(r.Missing()); got != tc.missing {
				t.Errorf("missing %q, want %q", got, tc.missing)
			}
		})
	}
}

// subids is /etc/subuid and /etc/subgid with the same lines.
func subids(lines ...string) map[string]string {
	s := strings.Join(lines, "\n") + "\n"
	return map[string]string{"/etc/subuid": s, "/etc/subgid": s}
}

func TestSubordinateIDs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		account *Account
		files   map[string]string
		ok      bool
		detail  string // in Detail
		fix     string // the whole Fix
	}{
		{"no files", alice, map[string]string{}, false, "/etc/subuid has no range for alice; /etc/subgid has no range for alice",
			"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice"},
		{"adduser's range", alice, subids("alice:100000:65536"), true, "alice: uids 100000-165535, gids 100000-165535", ""},
		{"a larger range", alice, subids("bob:100000:65536", "alice:165536:1000000"), true, "uids 165536-1165535", ""},
		{"past the others' ranges", alice, subids("bob:100000:65536", "carol:165536:65536"), false, "no range for alice",
			"sudo usermod --add-subuids 231072-296607 --add-subgids 231072-296607 alice"},
		{"past an odd range in one file only", alice,
			map[string]string{"/etc/subuid": "bob:100000:65536\n", "/etc/subgid": "bob:200000:10\n"}, false, "no range for alice",
			"sudo usermod --add-subuids 231072-296607 --add-subgids 231072-296607 alice"},
		{"below 100000 does not count", alice, subids("lxd:1000:1000"), false, "no range for alice",
			"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice"},
		{"too small", alice, subids("alice:100000:1000"), false, "alice's first range 100000-100999 has 1000 ids, under 65536",
			"sudo usermod --del-subuids 100000-100999 --add-subuids 165536-231071 --del-subgids 100000-100999 --add-subgids 165536-231071 alice"},
		{"only the first range counts", alice, subids("alice:100000:10", "alice:300000:65536"), false, "first range 100000-100009",
			"sudo usermod --del-subuids 100000-100009 --add-subuids 427680-493215 --del-subgids 100000-100009 --add-subgids 427680-493215 alice"},
		{"by uid only", alice, subids("1000:100000:65536"), false, "a range for uid 1000 but none for alice (mmdebstrap looks ranges up by name)",
			"sudo usermod --add-subuids 165536-231071 --add-subgids 165536-231071 alice"},
		{"gids missing", alice, map[string]string{"/etc/subuid": "alice:100000:65536\n"}, false, "/etc/subgid has no range for alice",
			"sudo usermod --add-subgids 165536-231071 alice"},
		{"comments and junk", alice, subids("# alice:1:1", "", "alice:x:65536", "alice:100000:65536"), true, "uids 100000-165535", ""},
		{"no user name", &Account{UID: 4242}, subids(), false, "uid 4242 has no user name", "run emu as a user with an entry in /etc/passwd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := subidCheck(fakeHost(Options{Account: tc.account, GOOS: "linux", ReadFile: fakeFiles(tc.files)}).withDefaults())
			if c.OK != tc.ok || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check = %+v; want ok=%v, detail with %q", c, tc.ok, tc.detail)
			}
			if c.Fix != tc.fix {
				t.Errorf("Fix = %q\nwant  %q", c.Fix, tc.fix)
			}
		})
	}
}

func TestSubidStart(t *testing.T) {
	r := func(start, count uint64) subRange { return subRange{owner: "x", start: start, count: count} }
	for _, tc := range []struct {
		name   string
		ranges []subRange
		want   uint64
	}{
		{"none", nil, 100000},
		{"below", []subRange{r(0, 1000), r(1000, 99000)}, 100000},
		{"ends at the start", []subRange{r(34464, 65536)}, 100000},
		{"one", []subRange{r(100000, 65536)}, 165536},
		{"one id over", []subRange{r(100000, 65537)}, 231072},
		{"unordered", []subRange{r(231072, 65536), r(100000, 65536)}, 296608},
		{"a gap is not reused", []subRange{r(100000, 65536), r(1000000, 1)}, 1017504},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := subidStart(tc.ranges); got != tc.want {
				t.Errorf("subidStart = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestParseSubids(t *testing.T) {
	got := parseSubids("alice:100000:65536\n# bob:1:2\n\n1001:165536:65536\n  carol:231072:65536  \nbad\nx:1\nd:-1:5\n")
	want := []subRange{{"alice", 100000, 65536}, {"1001", 165536, 65536}, {"carol", 231072, 65536}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(subRange{})); diff != "" {
		t.Errorf("parseSubids (-want +got):\n%s", diff)
	}
}

// A user's build checks the rootless path and says sudo; root's does not
// check it at all, nor does a Mac or a run without a build.
func TestRootlessInRun(t *testing.T) {
	healthy := fakeFiles(merge(debianSysctls, subids("alice:100000:65536")))
	user := Run(context.Background(), fakeHost(Options{NeedBuild: true, GuestArch: "amd64", GOOS: "linux", Account: alice,
		LookPath: fakeLookPath(append(all, "newuidmap", "newgidmap")...), ReadFile: healthy, Choose: kvmChoice}))
	want := "qemu-system-x86_64 qemu-img zstd tar mmdebstrap mkfs.ext4 user namespaces newuidmap newgidmap subordinate ids mke2fs version libarchive accelerator"
	if got := checkNames(user.Checks); got != want || !user.OK() {
		t.Errorf("a user's checks %q (ok %v), want %q", got, user.OK(), want)
	}
	if r := rootlessReport(fakeHost(Options{GOOS: "linux"})); len(r.Checks) != 0 || r.Err() != nil {
		t.Errorf("root's rootless checks: %+v", r.Checks)
	}
	if r := rootlessReport(fakeHost(Options{GOOS: "darwin", Account: alice})); len(r.Checks) != 0 {
		t.Errorf("a Mac's rootless checks: %+v", r.Checks)
	}
	run := Run(context.Background(), fakeHost(Options{GuestArch: "amd64", GOOS: "linux", Account: alice,
		LookPath: fakeLookPath(all...), ReadFile: healthy, Choose: kvmChoice}))
	if got := checkNames(run.Checks); got != "qemu-system-x86_64 qemu-img accelerator" {
		t.Errorf("checks without NeedBuild: %q", got)
	}

	// Everything missing: one sudo apt-get line, then the other fixes.
	r := Run(context.Background(), fakeHost(Options{NeedBuild: true, GuestArch: "amd64", GOOS: "linux", Account: alice,
		LookPath: fakeLookPath("qemu-system-x86_64", "qemu-img", "zstd", "tar"), ReadFile: fakeFiles(map[string]string{
			"/proc/sys/user/max_user_namespaces": "0", "/etc/os-release": "VERSION_CODENAME=bookworm"}),
		Exists: fakeExists(), Choose: kvmChoice}))
	var b strings.Builder
	r.Write(&b)
	for _, s := range []string{
		"to install what is missing:\n  sudo apt-get install -y --no-install-recommends e2fsprogs libarchive13 mmdebstrap uidmap\n",
		"user namespaces: sudo sysctl -w user.max_user_namespaces=15000;",
		"subordinate ids: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice\n",
	} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("Write output lacks %q:\n%s", s, b.String())
		}
	}
	err := r.Err()
	var me *MissingError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "user namespaces: user.max_user_namespaces is 0") {
		t.Fatalf("Err = %v", err)
	}
	if h := me.HintText(); !strings.HasPrefix(h, "sudo apt-get install") || !strings.Contains(h, "\nsubordinate ids: sudo usermod") {
		t.Errorf("HintText = %q", h)
	}
}

func TestPrivilege(t *testing.T) {
	p := filepath.Join(t.TempDir(), "newuidmap")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if how, err := privilege(p); how != "" || err != nil {
		t.Errorf("privilege(plain file) = %q, %v", how, err)
	}
	if _, err := privilege(p + ".missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("privilege(missing) error = %v", err)
	}
	if os.Getuid() != 0 {
		return // only root owns a setuid-root file
	}
	if err := os.Chmod(p, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if how, err := privilege(p); how != "setuid root" || err != nil {
		t.Errorf("privilege(setuid root file) = %q, %v", how, err)
	}
}

// rootlessReport is the rootless checks alone, as Run would report them.
func rootlessReport(opts Options) Report {
	opts = opts.withDefaults()
	return Report{GOOS: opts.GOOS, sudo: opts.sudo(), Checks: rootlessChecks(opts)}
}
