package machine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKernelCrash(t *testing.T) {
	for _, tc := range []struct {
		name, log, want string
	}{
		{"clean boot", "[    1.0] Run /init as init process\n[   21.3] emu-agent: hello\n[   51.5] reboot: Power down\n", ""},
		{"sysrq panic", "[    2.1] sysrq: Trigger a crash\n[    2.1] Kernel panic - not syncing: sysrq triggered crash\n[    2.1] CPU: 0 PID: 80\n[    2.1] Call Trace:\n",
			"Kernel panic - not syncing: sysrq triggered crash"},
		// The first report is the cause; the panic after it is a consequence.
		{"oops then panic", "[    1.92] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\r\n[    1.92] RIP: 0010:sched_clock_cpu+0x9/0x1d0\n[    1.92] Kernel panic - not syncing: Fatal exception in interrupt\n",
			"Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"},
		{"BUG", "[    3.0] kernel BUG at mm/slub.c:42!\n[    3.0] invalid opcode: 0000 [#1] SMP\n", "kernel BUG at mm/slub.c:42!"},
		{"no root", "[    1.6] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n",
			"Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"},
		// A service printing the word is not a crash.
		{"userspace oops", "[   30.0] emu-agent[310]: api: Oops: retrying\n", ""},
		{"no timestamps", "Kernel panic - not syncing: Attempted to kill init!\n", "Kernel panic - not syncing: Attempted to kill init!"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := KernelCrash(tc.log); got != tc.want {
				t.Errorf("KernelCrash = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadConsoleExplain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	var b strings.Builder
	b.WriteString("[    2.1] Kernel panic - not syncing: sysrq triggered crash\n")
	for range 40 {
		b.WriteString("[    2.1]  ? do_syscall_64+0x5d/0x90\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadConsole(path, 30)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tail) != 30 {
		t.Errorf("tail has %d lines, want 30", len(c.Tail))
	}
	// The panic line scrolled out of the tail; the error still says it.
	base := errors.New("qemu exited")
	err = c.Explain(base)
	if want := "qemu exited: the guest kernel crashed: Kernel panic - not syncing: sysrq triggered crash"; err.Error() != want {
		t.Errorf("Explain = %q, want %q", err, want)
	}
	if !errors.Is(err, base) {
		t.Errorf("Explain lost the wrapped error")
	}
	if got := (Console{}).Explain(base); got != base {
		t.Errorf("no crash: Explain = %v, want the error unchanged", got)
	}
	if _, err := ReadConsole(filepath.Join(t.TempDir(), "none"), 30); err == nil {
		t.Errorf("ReadConsole of a missing file: no error")
	}
}
