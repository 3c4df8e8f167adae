package machine

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A socket path over the unix limit fails before QEMU starts, naming the
// setting that moves it: EMU_HOME for an instance's sockets, TMPDIR for
// the private channel of a build or a boot check.
func TestSocketPathTooLong(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		tmp  string
		want string
	}{
		{"instance", Config{AgentSocket: filepath.Join(long, "agent.sock")}, "", "set EMU_HOME to a shorter directory"},
		{"qmp", Config{AgentSocket: filepath.Join(t.TempDir(), "a.sock"), QMPSocket: filepath.Join(long, "qmp.sock")}, "", "set EMU_HOME"},
		{"build", Config{}, long, "set TMPDIR to a shorter directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.tmp != "" {
				t.Setenv("TMPDIR", tc.tmp)
			}
			tc.cfg.QEMU = "/nonexistent/qemu"
			_, err := Start(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), "too long for a unix socket") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error with %q", err, tc.want)
			}
		})
	}
}
