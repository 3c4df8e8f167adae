package agent

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// Every slim test works in a temp dir: slim is never called with
// DefaultSlim here, whose /tmp/* and /var/cache globs are the host's.

func TestSlim(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{
		"usr/share/doc/pkg/README", "usr/share/doc/other/NEWS", "usr/share/man/man1/x.1",
		"var/cache/apt/pkgcache.bin", "var/cache/apt/archives/a.deb", "var/cache/apt/archives/partial/keep",
		"tmp/.hidden", "tmp/build/obj.o", "etc/keep.conf",
	} {
		writeFile(t, filepath.Join(dir, p), "x")
	}
	sys := &fakeSystem{}
	a := newAgent(Options{
		Config:       proto.Config{Services: []proto.Service{{Name: "db", Unit: "db.service"}, {Name: "api", Unit: "api.service"}}},
		System:       sys,
		TrimPaths:    []string{filepath.Join(dir, "no-such-root")},
		SlimDefaults: []string{filepath.Join(dir, "var/cache/apt/*.bin"), filepath.Join(dir, "var/cache/apt/archives/*.deb"), filepath.Join(dir, "tmp/*")},
	})
	fields, err := a.slim(t.Context(), []string{
		filepath.Join(dir, "usr/share/doc"),
		filepath.Join(dir, "usr/share/man/*"),
		filepath.Join(dir, "usr/share/nothing-here/*"),
	}, false)
	if err != nil {
		t.Fatalf("slim: %v", err)
	}
	// doc, man/man1, pkgcache.bin, a.deb, tmp/.hidden, tmp/build.
	if diff := cmp.Diff(map[string]string{"removed": "6", "trimmed": "0"}, fields); diff != "" {
		t.Errorf("slim fields (-want +got):\n%s", diff)
	}
	assertGone(t,
		filepath.Join(dir, "usr/share/doc"), filepath.Join(dir, "usr/share/man/man1"),
		filepath.Join(dir, "var/cache/apt/pkgcache.bin"), filepath.Join(dir, "var/cache/apt/archives/a.deb"),
		filepath.Join(dir, "tmp/.hidden"), filepath.Join(dir, "tmp/build"),
	)
	assertExists(t,
		filepath.Join(dir, "usr/share/man"), filepath.Join(dir, "tmp"), filepath.Join(dir, "etc/keep.conf"),
		filepath.Join(dir, "var/cache/apt/archives/partial/keep"),
	)
	if diff := cmp.Diff([]string{"stop api.service", "stop db.service"}, sys.Calls()); diff != "" {
		t.Errorf("services stopped before the slim (-want +got):\n%s", diff)
	}
	// The trim of a root that cannot be trimmed is logged, not fatal.
	logged := slices.ContainsFunc(emitted(a), func(e event.Event) bool {
		return e.Kind == event.Log && e.Name == "slim" && strings.Contains(e.Msg, "trim ")
	})
	if !logged {
		t.Error("no log event for the failed trim")
	}
}

func TestSlimBadPattern(t *testing.T) {
	a := newAgent(Options{TrimPaths: []string{filepath.Join(t.TempDir(), "no-such-root")}})
	_, err := a.slim(t.Context(), []string{"[unclosed"}, false)
	if err == nil || !strings.Contains(err.Error(), `slim: bad pattern "[unclosed"`) {
		t.Errorf("slim = %v, want a bad-pattern error", err)
	}
}

func TestSlimWithoutDefaults(t *testing.T) {
	// An agent not made by Start has no slim defaults: it removes only
	// what it is given.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a"), "x")
	a := newAgent(Options{TrimPaths: []string{filepath.Join(dir, "no-such-root")}})
	fields, err := a.slim(t.Context(), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if fields["removed"] != "0" {
		t.Errorf("removed = %s, want 0", fields["removed"])
	}
	assertExists(t, filepath.Join(dir, "a"))
}

func TestDefaultSlimIsAbsolute(t *testing.T) {
	for _, p := range DefaultSlim {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			t.Errorf("DefaultSlim entry %q is not a clean absolute path", p)
		}
		if p == "/" || p == "/*" {
			t.Errorf("DefaultSlim entry %q would remove the whole system", p)
		}
	}
}

func TestTrimMissingPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := Trim(missing); err == nil || !strings.Contains(err.Error(), "trim "+missing) {
		t.Errorf("Trim(missing) = %v, want an error naming the path", err)
	}
}
