// Package machine runs a guest: QEMU started from a pure argv, the agent's
// event stream followed, the process always reaped.
package machine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
)

// Config is one guest to boot.
type Config struct {
	Name    string
	Arch    string
	VM      spec.VM
	Accel   accel.Choice
	Kernel  string
	Initrd  string
	Cmdline string
	Drive   qemu.Drive
	// Extra disks follow the root disk (the build's read-only image
	// sources).
	Extra []qemu.Drive
	// Serial is the console log file; Output receives QEMU's own messages.
	Serial string
	Output string
	// AgentSocket is the agent channel's path; "" makes one in a private
	// temporary directory, removed once connected, so the channel lives only
	// as long as QEMU and nobody else can reach it (builds, boot checks).
	AgentSocket string
	// QMPSocket, Forwards, FWCfg and Detach are for long-running instances.
	QMPSocket string
	Forwards  []proto.Forward
	FWCfg     []qemu.FWCfgFile
	Detach    bool
	// Incoming starts QEMU waiting for a saved state (RestoreState)
	// instead of booting.
	Incoming bool
	QEMU     string
	Log      *slog.Logger
}

// VM is a booted guest and its event stream.
type VM struct {
	Proc       *qemu.Process
	SerialPath string
	// events delivers the agent's events; it is closed when the channel
	// to the agent ends (QEMU exited, or the stream broke).
	events <-chan event.Event
	// StreamErr is why Events closed, once it has.
	streamErr error

	conn   net.Conn
	mu     sync.Mutex
	sendMu sync.Mutex
}

// Start boots the guest and connects to its agent channel. The channel is
// a listening socket made here and handed to QEMU as a file descriptor, so
// connecting needs no wait for QEMU to create anything. Without
// cfg.AgentSocket it is made in a directory only this user can enter
// (0700) and unlinked once connected: no other local user can see it or
// connect to it (an abstract socket, what emu used before, is open to
// every process in the network namespace).
func Start(ctx context.Context, cfg Config) (*VM, error) {
	bin := cfg.QEMU
	if bin == "" {
		var err error
		if bin, err = qemu.Binary(cfg.Arch); err != nil {
			return nil, err
		}
	}
	// Which setting moves a socket whose path is too long.
	agentAddr, agentDir := cfg.AgentSocket, "EMU_HOME"
	if agentAddr == "" {
		agentDir = "TMPDIR"
		dir, err := os.MkdirTemp("", "emu-agent-")
		if err != nil {
			return nil, fmt.Errorf("make agent channel directory: %w", err)
		}
		defer os.RemoveAll(dir)
		agentAddr = filepath.Join(dir, "agent.sock")
	}
	// QEMU creates the console log with the usual 0644: make it first.
	if cfg.Serial != "" {
		f, err := os.OpenFile(cfg.Serial, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create console log: %w", err)
		}
		f.Close()
	}
	// Each socket is made here, listening, and handed to QEMU as a file
	// descriptor: connecting then needs no wait for QEMU to create it.
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, s := range []struct{ addr, dir string }{{agentAddr, agentDir}, {cfg.QMPSocket, "EMU_HOME"}} {
		if s.addr == "" {
			continue
		}
		f, err := listenFile(s.addr, s.dir)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	argv, err := Args(cfg, qemu.Host{OS: runtime.GOOS, Arch: runtime.GOARCH})
	if err != nil {
		return nil, err
	}
	out, err := os.OpenFile(cfg.Output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create qemu log: %w", err)
	}
	defer out.Close()
	proc, err := qemu.Start(qemu.StartOptions{
		Binary: bin, Args: argv, ExtraFiles: files, Output: out, Detach: cfg.Detach, Log: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	vm, err := Connect(ctx, agentAddr)
	if err != nil {
		proc.Stop(context.WithoutCancel(ctx), time.Second)
		return nil, err
	}
	vm.Proc, vm.SerialPath = proc, cfg.Serial
	return vm, nil
}

// Args is QEMU's command line for cfg on host: the agent's channel is fd
// 3, QMP's fd 4 when cfg has a QMP socket. It is pure; golden files hold
// it for each real caller (provisioning, the boot check, up).
func Args(cfg Config, host qemu.Host) ([]string, error) {
	qmpSock := qemu.Socket{}
	if cfg.QMPSocket != "" {
		qmpSock = qemu.Socket{FD: 4}
	}
	argv, err := qemu.Args(qemu.Config{
		Arch: cfg.Arch, Accel: cfg.Accel.Accel, CPUs: cfg.VM.CPUs, Memory: int64(cfg.VM.Memory),
		Kernel: cfg.Kernel, Initrd: cfg.Initrd, Append: cfg.Cmdline,
		Drives:    append([]qemu.Drive{cfg.Drive}, cfg.Extra...),
		SerialLog: cfg.Serial,
		Agent:     qemu.Socket{FD: 3},
		QMP:       qmpSock,
		Forwards:  cfg.Forwards,
		FWCfg:     cfg.FWCfg,
		Name:      cfg.Name,
		NoReboot:  true,
		TBSize:    cfg.Accel.TBSize,
		Incoming:  cfg.Incoming,
	}, host)
	if err != nil {
		return nil, fmt.Errorf("qemu command line: %w", err)
	}
	return argv, nil
}

// Connect opens the agent channel at the socket path addr of a guest
// already running. Proc is nil then: the caller did not start QEMU.
func Connect(ctx context.Context, addr string) (*VM, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := d.DialContext(dctx, "unix", addr)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("connect to agent channel %s: %w", addr, err)
	}
	events := make(chan event.Event, 256)
	vm := &VM{events: events, conn: conn}
	go vm.read(events)
	return vm, nil
}

// listenFile makes a listening unix socket at the path addr, readable and
// writable by its owner only, and returns it as a file for QEMU. The
// socket outlives this process's copy (QEMU holds it). dir names the
// setting that chose the socket's directory, for the error of a path too
// long.
func listenFile(addr, dir string) (*os.File, error) {
	if len(addr) > 100 {
		return nil, fmt.Errorf("socket path %s is too long for a unix socket (%d bytes; set %s to a shorter directory)", addr, len(addr), dir)
	}
	_ = os.Remove(addr)
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	// Whoever may write to the socket may connect: its owner only.
	if err := os.Chmod(addr, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("make %s private: %w", addr, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	f, err := ul.File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return f, nil
}

func (vm *VM) read(events chan<- event.Event) {
	defer close(events)
	dec := event.NewDecoder(vm.conn)
	for {
		e, err := dec.Decode()
		if err != nil {
			vm.mu.Lock()
			vm.streamErr = err
			vm.mu.Unlock()
			return
		}
		events <- e
	}
}

// Events delivers the agent's events; it is closed when the channel to
// the agent ends (QEMU exited, or the stream broke).
func (vm *VM) Events() <-chan event.Event { return vm.events }

// Exited is closed once QEMU has exited; it never is for a guest this
// process did not start (Connect).
func (vm *VM) Exited() <-chan struct{} {
	if vm.Proc == nil {
		return nil
	}
	return vm.Proc.Done()
}

// ExitErr is how QEMU ended, once Exited is closed.
func (vm *VM) ExitErr() error {
	if vm.Proc == nil || !vm.Proc.Exited() {
		return nil
	}
	return vm.Proc.Wait()
}

// Console is the serial console's log file.
func (vm *VM) Console() string { return vm.SerialPath }

// Send writes one request to the agent. It is safe for concurrent use:
// each request is one whole line.
func (vm *VM) Send(r proto.Request) error {
	b, err := proto.EncodeRequest(r)
	if err != nil {
		return err
	}
	vm.sendMu.Lock()
	defer vm.sendMu.Unlock()
	vm.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := vm.conn.Write(b); err != nil {
		return fmt.Errorf("send %s request to the agent: %w", r.Op, err)
	}
	return nil
}

// StreamErr is why the event stream ended, io.EOF for a clean close.
func (vm *VM) StreamErr() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.streamErr
}

// Stop ends QEMU (SIGTERM, then SIGKILL after grace) and closes the channel.
func (vm *VM) Stop(ctx context.Context, grace time.Duration) error {
	var err error
	if vm.Proc != nil {
		err = vm.Proc.Stop(ctx, grace)
	}
	vm.conn.Close()
	return err
}

// Close closes the channel and leaves QEMU running.
func (vm *VM) Close() error { return vm.conn.Close() }

func randomID() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(errors.Join(errors.New("crypto/rand"), err))
	}
	return hex.EncodeToString(b)
}
