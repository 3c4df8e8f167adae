package machine

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// ExecOptions are one command run in a running guest (emu exec).
type ExecOptions struct {
	Argv []string
	// Service runs it in that container service's container.
	Service string
	// TTY gives it a terminal of Rows x Cols; Resize then carries new
	// sizes as {rows, cols}.
	TTY        bool
	Rows, Cols uint16
	Resize     <-chan [2]uint16
	Env        map[string]string
	Stdin      io.Reader
	Stdout     io.Writer
	Stderr     io.Writer
}

// Exec runs o.Argv in the guest whose agent listens at sock, streaming its
// stdin, stdout and stderr, and returns its exit code. When ctx ends the
// command's process group is killed and ctx's error returned.
func Exec(ctx context.Context, sock string, o ExecOptions) (int, error) {
	vm, err := Connect(ctx, sock)
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	id := randomID()
	err = vm.Send(proto.Request{Op: proto.OpExec, ID: id, Argv: o.Argv, Service: o.Service, TTY: o.TTY,
		Rows: o.Rows, Cols: o.Cols, Env: o.Env})
	if err != nil {
		return 0, err
	}
	if o.Stdin != nil {
		go feed(vm, id, o.Stdin)
	}
	if o.Resize != nil {
		go func() {
			for {
				select {
				case sz, ok := <-o.Resize:
					if !ok {
						return
					}
					vm.Send(proto.Request{Op: proto.OpResize, ID: id, Rows: sz[0], Cols: sz[1]})
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	code := -1
	var werr error
	end, err := follow(ctx, vm, nil, func(e event.Event) (bool, error) {
		if e.Name != id {
			return false, nil
		}
		switch e.Kind {
		case event.ExecOutput:
			var b []byte
			if err := e.DecodeData(&b); err != nil {
				return true, err
			}
			w := o.Stdout
			if e.Fields[proto.FieldStream] == "stderr" {
				w = o.Stderr
			}
			if _, err := w.Write(b); err != nil && werr == nil {
				werr = err
			}
		case event.ExecExit:
			if e.Code != nil {
				code = *e.Code
			}
			return true, nil
		}
		return false, nil
	})
	switch end {
	case endClosed:
		return 0, errors.New("the agent's channel closed before the command ended")
	case endCtx:
		// Kill it: a command nobody follows must not run on.
		vm.Send(proto.Request{Op: proto.OpSignal, ID: id, Signal: 9})
		return 0, fmt.Errorf("exec %s: %w", o.Argv[0], err)
	}
	if err != nil {
		return 0, err
	}
	return code, werr
}

// feed sends r as the run's stdin, then its end.
func feed(vm *VM, id string, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if vm.Send(proto.Request{Op: proto.OpInput, ID: id, Data: buf[:n]}) != nil {
				return
			}
		}
		if err != nil {
			vm.Send(proto.Request{Op: proto.OpInput, ID: id, EOF: true})
			return
		}
	}
}
