package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// execOutput reads run id's events up to its exit: what it wrote to each
// stream, and its exit code.
func execOutput(t *testing.T, h *host, id string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb strings.Builder
	timeout := time.After(wait)
	for {
		var e event.Event
		select {
		case ev, ok := <-h.events:
			if !ok {
				t.Fatalf("event stream ended before %s exited", id)
			}
			e = ev
		case <-timeout:
			t.Fatalf("%s did not exit within %s", id, wait)
		}
		h.got = append(h.got, e)
		if e.Name != id {
			continue
		}
		switch e.Kind {
		case event.ExecOutput:
			var b []byte
			if err := e.DecodeData(&b); err != nil {
				t.Fatal(err)
			}
			if e.Fields[proto.FieldStream] == "stderr" {
				errb.Write(b)
			} else {
				out.Write(b)
			}
		case event.ExecExit:
			if e.Code == nil {
				t.Fatalf("exec.exit without a code: %v", e)
			}
			return out.String(), errb.String(), *e.Code
		}
	}
}

func TestExecPipes(t *testing.T) {
	h := startAgent(t, Options{Mode: proto.Run})
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpExec, ID: "r1", Argv: []string{"sh", "-c", `read x; echo "out:$x"; echo err >&2; cat; exit 3`}})
	h.send(proto.Request{Op: proto.OpInput, ID: "r1", Data: []byte("hi\nrest of stdin")})
	h.send(proto.Request{Op: proto.OpInput, ID: "r1", EOF: true})
	out, errs, code := execOutput(t, h, "r1")
	if out != "out:hi\nrest of stdin" || errs != "err\n" || code != 3 {
		t.Errorf("exec: stdout %q, stderr %q, code %d", out, errs, code)
	}
	// A command that does not exist: the error on stderr, code 127.
	h.send(proto.Request{Op: proto.OpExec, ID: "r2", Argv: []string{"/no/such/program"}})
	if _, errs, code := execOutput(t, h, "r2"); code != 127 || !strings.Contains(errs, "/no/such/program") {
		t.Errorf("missing program: stderr %q, code %d", errs, code)
	}
	// A signal ends the process group; the code says which.
	h.send(proto.Request{Op: proto.OpExec, ID: "r3", Argv: []string{"sh", "-c", "echo up; exec sleep 600"}})
	h.next(event.ExecOutput, "r3")
	h.send(proto.Request{Op: proto.OpSignal, ID: "r3", Signal: 15})
	if _, _, code := execOutput(t, h, "r3"); code != 128+15 {
		t.Errorf("after SIGTERM: code %d, want 143", code)
	}
}

func TestExecTTY(t *testing.T) {
	h := startAgent(t, Options{Mode: proto.Run})
	h.next(event.Ready, "")
	h.send(proto.Request{Op: proto.OpExec, ID: "t1", TTY: true, Rows: 33, Cols: 101,
		Env: map[string]string{"TERM": "dumb"}, Argv: []string{"sh", "-c", `tty; stty size; read x; echo "got $x"`}})
	h.send(proto.Request{Op: proto.OpInput, ID: "t1", Data: []byte("typed\n")})
	out, _, code := execOutput(t, h, "t1")
	if code != 0 || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "33 101") || !strings.Contains(out, "got typed") {
		t.Errorf("exec with a terminal: code %d, output %q", code, out)
	}
}
