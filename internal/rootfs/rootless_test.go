package rootfs

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/spec"
)

// entry is what a tree holds at one path, apart from its time stamps.
type entry struct {
	Type           byte
	Mode           int64
	UID, GID       int
	Size           int64
	Link           string
	Major, Minor   int64
	Digest, Xattrs string
}

// listTarball reads a root filesystem tarball into path -> entry.
func listTarball(t *testing.T, p string) map[string]entry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	got := map[string]entry{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		e := entry{Type: h.Typeflag, Mode: h.Mode, UID: h.Uid, GID: h.Gid, Size: h.Size, Link: h.Linkname, Major: h.Devmajor, Minor: h.Devminor}
		if h.Typeflag == tar.TypeReg {
			s := sha256.New()
			if _, err := io.Copy(s, tr); err != nil {
				t.Fatal(err)
			}
			e.Digest = hex.EncodeToString(s.Sum(nil))
		}
		var xs []string
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xs = append(xs, k+"="+hex.EncodeToString([]byte(v)))
			}
		}
		sort.Strings(xs)
		e.Xattrs = strings.Join(xs, ",")
		got[path.Clean("/"+h.Name)] = e
	}
}

// varies holds the files whose contents differ between any two runs of
// mmdebstrap, whoever runs it: caches and logs stamped with the time.
var varies = map[string]bool{
	"/var/cache/ldconfig/aux-cache": true, // inode numbers and times of the libraries
}

// TestRootlessSameTree makes the same base tree as root (mmdebstrap's root
// mode) and as a regular user (unshare mode, the user's subordinate ids),
// and checks they hold the same files with the same owners, modes, device
// numbers, link targets, extended attributes and contents. It needs root,
// the network to Debian's archive and a user with subordinate ids, named by
// EMU_TEST_ROOTLESS_USER (CI makes one); without it the test is skipped.
func TestRootlessSameTree(t *testing.T) {
	name := os.Getenv("EMU_TEST_ROOTLESS_USER")
	if name == "" {
		t.Skip("EMU_TEST_ROOTLESS_USER names no user to build as")
	}
	if os.Geteuid() != 0 {
		t.Fatal("EMU_TEST_ROOTLESS_USER is set: the test builds as root and as that user, and must run as root")
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	base := spec.Base{Suite: "bookworm", Arch: runtime.GOARCH}
	// Both runs stamp generated files with the same time: the test is
	// about owners and modes, not about the clock between two runs.
	t.Setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(time.Now().Unix(), 10))

	// Not t.TempDir: its parent is private to root, and the user must
	// reach a directory of its own inside.
	dir, err := os.MkdirTemp("", "emu-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	asRoot := filepath.Join(dir, "root.tar.zst")
	if _, err := (command.Exec{}).Run(ctx, "mmdebstrap", Args(base, "root", asRoot)...); err != nil {
		t.Fatal(err)
	}
	userDir := filepath.Join(dir, "user")
	if err := os.Mkdir(userDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(userDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	asUser := filepath.Join(userDir, "user.tar.zst")
	args := append([]string{"-u", name, "--", "env", "SOURCE_DATE_EPOCH=" + os.Getenv("SOURCE_DATE_EPOCH"), "mmdebstrap"}, Args(base, "unshare", asUser)...)
	cmd := exec.CommandContext(ctx, "runuser", args...)
	cmd.Dir = userDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mmdebstrap as %s: %v\n%s", name, err, command.Tail(out, 30))
	}

	r, us := listTarball(t, asRoot), listTarball(t, asUser)
	var diffs []string
	for p, re := range r {
		ue, ok := us[p]
		switch {
		case !ok:
			diffs = append(diffs, "only as root: "+p)
		case varies[p]:
			re.Digest, ue.Digest, re.Size, ue.Size = "", "", 0, 0
			fallthrough
		default:
			if re != ue {
				diffs = append(diffs, fmt.Sprintf("%s: root %+v, user %+v", p, re, ue))
			}
		}
	}
	for p := range us {
		if _, ok := r[p]; !ok {
			diffs = append(diffs, "only as the user: "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 40 {
			diffs = append(diffs[:40], fmt.Sprintf("... and %d more", len(diffs)-40))
		}
		t.Errorf("the tree made as %s differs from root's in %d places:\n%s", name, len(diffs), strings.Join(diffs, "\n"))
	}
	owned := 0
	var sample string
	for p, e := range us {
		if e.UID != 0 || e.GID != 0 {
			owned++
			if sample == "" || p < sample {
				sample = p
			}
		}
	}
	if owned == 0 {
		t.Fatal("no file in the tree is owned by anyone but root: the comparison would not see a lost owner")
	}

	// The user's tree to a disk, as the user: mke2fs -d reads the tarball
	// (what the build does, with emu's files laid over it), e2fsck finds
	// nothing to mend, and an owner other than root is on the disk.
	raw := filepath.Join(userDir, "disk.raw")
	cmd = exec.CommandContext(ctx, "runuser", "-u", name, "--", tool(t, "mkfs.ext4"), "-q", "-F", "-O", "^has_journal", "-d", asUser, raw, "2G")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 as %s: %v\n%s", name, err, out)
	}
	if out, err := exec.CommandContext(ctx, tool(t, "e2fsck"), "-fn", raw).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn of the disk made as %s: %v\n%s", name, err, out)
	}
	out, err := exec.CommandContext(ctx, tool(t, "debugfs"), "-R", "stat "+sample, raw).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("User: %d Group: %d", us[sample].UID, us[sample].GID)
	if got := strings.Join(strings.Fields(string(out)), " "); !strings.Contains(got, want) {
		t.Errorf("%s on the disk made as %s: want %q in\n%s", sample, name, want, out)
	}
	t.Logf("%d entries, %d owned by other users than root, the same as root and as %s", len(r), owned, name)
}

// tool finds a program in PATH or the sbin directories.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := command.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
