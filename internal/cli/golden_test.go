package cli

import (
	"bytes"
	"io"
	"testing"

	"github.com/emu-dev/emu/internal/golden"
	"github.com/emu-dev/emu/internal/proto"
)

// status --json, as scripts read it: one running instance with its
// services and ports, one stopped.
func TestGoldenStatusJSON(t *testing.T) {
	reps := []instanceReport{
		{
			Name: "demo", Running: true, PID: 4242, Accel: "tcg", Uptime: "3m12s", QEMU: "running",
			Services: []serviceReport{{Name: "postgres", State: "healthy"}, {Name: "api", State: "unhealthy", Msg: "http 503"}},
			Ports:    []proto.Forward{{Service: "api", Name: "http", Guest: 8080, Host: 26701}},
		},
		{Name: "other", Running: false},
	}
	var out bytes.Buffer
	e := &env{stdout: &out, stderr: io.Discard}
	if err := writeReports(e, reps, true); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "status.json", out.Bytes())
}
