package machine_test

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/agent"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/proto"
)

// realAgent runs the guest agent in this process, in run mode, on a unix
// socket the host side connects to, as QEMU's channel would carry it.
func realAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		agent.Start(ctx, agent.Options{Mode: proto.Run, Conn: c})
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("agent did not end")
		}
	})
	return sock
}

func TestExecThroughTheAgent(t *testing.T) {
	sock := realAgent(t)
	var out, errb bytes.Buffer
	code, err := machine.Exec(context.Background(), sock, machine.ExecOptions{
		Argv:  []string{"sh", "-c", `while read l; do echo "line:$l"; done; echo bye >&2; exit 7`},
		Stdin: strings.NewReader("one\ntwo\n"), Stdout: &out, Stderr: &errb,
	})
	if err != nil || code != 7 || out.String() != "line:one\nline:two\n" || errb.String() != "bye\n" {
		t.Errorf("Exec = %d, %v; stdout %q, stderr %q", code, err, out.String(), errb.String())
	}
}

// Bytes pass unchanged both ways, many events' worth.
func TestExecLargeTransfer(t *testing.T) {
	sock := realAgent(t)
	in := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 1<<19) // 9 MiB, binary
	var out bytes.Buffer
	code, err := machine.Exec(context.Background(), sock, machine.ExecOptions{
		Argv: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out, Stderr: &out,
	})
	if err != nil || code != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Errorf("Exec cat = %d, %v; %d bytes back of %d, equal %v", code, err, out.Len(), len(in), bytes.Equal(out.Bytes(), in))
	}
}
