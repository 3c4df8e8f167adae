package instance_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/store"
)

// qemusOf lists the pids of QEMU processes whose command line names dir.
func qemusOf(dir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "qemu-system") || !strings.Contains(string(b), dir) {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(filepath.Base(filepath.Dir(p)), &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// TestVMTwoStacksAndCycles: two stacks run side by side and stop without
// touching each other; then 20 up/down cycles of one (suspend and resume,
// and a few power-offs) leak no QEMU, no file descriptor of emu's, no
// temporary file, no disk cache entry and no console log beyond the two
// kept (serial.log and serial.log.1).
func TestVMTwoStacksAndCycles(t *testing.T) {
	home := store.At(t.TempDir())
	dirs := map[string]string{"tinya": tinyBundleNamed(t, home, "tinya"), "tinyb": tinyBundleNamed(t, home, "tinyb")}
	ctx := context.Background()
	t.Cleanup(func() {
		for name := range dirs {
			for _, pid := range qemusOf(home.Instance(name).Dir) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	up := func(name string) instance.Info {
		t.Helper()
		man, err := bundle.Read(dirs[name])
		if err != nil {
			t.Fatal(err)
		}
		release, err := instance.Lock(home.Instance(name))
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		info, err := instance.Up(ctx, instance.UpOptions{Instance: home.Instance(name), DiskCache: home.DiskCache(), Bundle: dirs[name], Manifest: man, Accel: tcg})
		if err != nil {
			t.Fatalf("up %s: %v", name, err)
		}
		return info
	}
	a, b := home.Instance("tinya"), home.Instance("tinyb")
	up("tinya")
	up("tinyb")
	if n, m := len(qemusOf(a.Dir)), len(qemusOf(b.Dir)); n != 1 || m != 1 {
		t.Fatalf("qemu processes: %d of tinya, %d of tinyb; want one each", n, m)
	}
	guestRun(t, a, "echo a > /root/who && sync")
	guestRun(t, b, "echo b > /root/who && sync")
	// Stopping one leaves the other running, with its own data.
	if _, err := instance.Suspend(ctx, a, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := guestRun(t, b, "cat /root/who"); got != "b" {
		t.Errorf("tinyb after tinya's down: %q", got)
	}
	if err := instance.Stop(ctx, b, nil, nil); err != nil {
		t.Fatal(err)
	}
	up("tinya")
	if got := guestRun(t, a, "cat /root/who"); got != "a" {
		t.Errorf("tinya after tinyb's down: %q", got)
	}
	if _, err := instance.Suspend(ctx, a, nil, nil); err != nil {
		t.Fatal(err)
	}

	fds := openFDs(t)
	disks, _ := os.ReadDir(home.DiskCache())
	for i := range 20 {
		info := up("tinya")
		guestRun(t, a, "echo "+string(rune('a'+i))+" >> /root/cycles && sync")
		// Every fifth cycle powers off: the next up boots.
		if i%5 == 4 {
			if err := instance.Stop(ctx, a, nil, event.SinkFunc(func(event.Event) {})); err != nil {
				t.Fatalf("cycle %d: stop: %v", i, err)
			}
		} else if _, err := instance.Suspend(ctx, a, nil, nil); err != nil {
			t.Fatalf("cycle %d (%s): suspend: %v", i, info.Start, err)
		}
		if pids := qemusOf(a.Dir); len(pids) > 0 {
			t.Fatalf("cycle %d: qemu left running after down: %v", i, pids)
		}
	}
	if _, err := instance.RunningPID(a); !errors.Is(err, instance.ErrNotRunning) {
		t.Errorf("RunningPID after the cycles = %v", err)
	}
	// Go's runtime may hold a descriptor or two more (epoll, a pidfd
	// being closed); a leak per cycle would be twenty.
	if now := openFDs(t); now > fds+3 {
		t.Errorf("open file descriptors: %d before 20 cycles, %d after", fds, now)
	}
	if now, _ := os.ReadDir(home.DiskCache()); len(now) != len(disks) {
		t.Errorf("disk cache entries: %d before, %d after", len(disks), len(now))
	}
	entries, _ := os.ReadDir(a.Dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if strings.HasSuffix(e.Name(), ".tmp") || strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left in the instance directory: %s", e.Name())
		}
		if strings.HasPrefix(e.Name(), "serial.log") && e.Name() != "serial.log" && e.Name() != "serial.log.1" {
			t.Errorf("console log kept beyond two: %s", e.Name())
		}
	}
	t.Logf("instance directory after 20 cycles: %s", strings.Join(names, " "))
	up("tinya")
	if got := guestRun(t, a, "wc -l < /root/cycles"); got != "20" {
		t.Errorf("%s lines written over 20 cycles survive, want 20", got)
	}
	if err := instance.Stop(ctx, a, nil, nil); err != nil {
		t.Fatal(err)
	}
}
