package machine

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// VerifyOptions configure a boot check of a bundle.
type VerifyOptions struct {
	Bundle string // the bundle directory
	// DiskCache holds unpacked bundle disks (store.Home.DiskCache).
	DiskCache string
	Accel     accel.Choice
	// WorkDir holds the throwaway overlay and the logs; it is removed after.
	WorkDir string
	// LogDir keeps the console log of the check; "" keeps none.
	LogDir  string
	Timeout time.Duration
	Sink    event.Sink
	Log     *slog.Logger
	QEMU    string
	// Name is QEMU's -name; default emu-verify-<stack>.
	Name string
}

// Guest-side allowances, before scaling for the accelerator
// (accel.Choice.Scale).
const (
	// HelloTimeout: QEMU's start to the agent's hello.
	HelloTimeout = 45 * time.Second
	// ResumeHelloTimeout: a resumed guest's QEMU start to the agent's
	// answer, the state's load included; not scaled (the load is most of
	// it, and a second under TCG).
	ResumeHelloTimeout = 30 * time.Second
	// ReadyTimeout: QEMU's start to every service healthy.
	ReadyTimeout = 3 * time.Minute
	// PowerOffTimeout: the agent's done or a shutdown request to QEMU's
	// exit, before QEMU is stopped.
	PowerOffTimeout = 30 * time.Second
)

// Timings split a boot check.
type Timings struct {
	Start    time.Duration `json:"qemu_start_ns"` // QEMU started and channel connected
	Hello    time.Duration `json:"boot_ns"`       // boot to the agent's hello
	Services time.Duration `json:"services_ns"`   // hello to every service healthy
	Ready    time.Duration `json:"ready_ns"`      // total: start to ready
	PowerOff time.Duration `json:"power_off_ns,omitempty"`
	// Restore is the load of a saved state, part of Start (a resume).
	Restore time.Duration `json:"restore_ns,omitempty"`
	// Snapshot is the pause that saved the image's ready snapshot, after
	// ready (the first up of an image).
	Snapshot time.Duration `json:"snapshot_ns,omitempty"`
}

// Verify boots the bundle on a throwaway overlay, waits for the agent's
// hello and every service healthy, then powers the guest off cleanly.
func Verify(ctx context.Context, opts VerifyOptions) (Timings, error) {
	var t Timings
	man, err := bundle.Read(opts.Bundle)
	if err != nil {
		return t, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = opts.Accel.Scale(ReadyTimeout)
	}
	emit := func(e event.Event) {
		if opts.Sink != nil {
			opts.Sink.Emit(e)
		}
	}
	if err := os.MkdirAll(opts.WorkDir, 0o700); err != nil {
		return t, fmt.Errorf("create %s: %w", opts.WorkDir, err)
	}
	work, err := os.MkdirTemp(opts.WorkDir, "verify-")
	if err != nil {
		return t, fmt.Errorf("create verify directory: %w", err)
	}
	defer os.RemoveAll(work)
	overlay := filepath.Join(work, "overlay.qcow2")
	base, err := BaseDisk(ctx, opts.DiskCache, opts.Bundle, man)
	if err != nil {
		return t, err
	}
	if err := disk.CreateOverlay(ctx, command.Exec{}, base, overlay); err != nil {
		return t, err
	}
	logDir := opts.LogDir
	if logDir == "" {
		logDir = work
	} else if err := os.MkdirAll(logDir, 0o700); err != nil {
		return t, err
	}
	// The check forwards every service port, each to a free host port,
	// and proves them from the host as emu up does.
	fwds, err := FreeForwards(man)
	if err != nil {
		return t, err
	}
	runtime := filepath.Join(work, "runtime.json")
	rb, err := json.Marshal(proto.Runtime{Instance: man.Name, Ports: fwds})
	if err != nil {
		return t, err
	}
	if err := os.WriteFile(runtime, rb, 0o600); err != nil {
		return t, fmt.Errorf("write runtime config: %w", err)
	}
	start := time.Now()
	emit(event.New(event.StageStart, "boot", man.Name))
	serial := filepath.Join(logDir, store.SerialLog)
	sess := &Session{
		Op: "verify",
		Boot: func(ctx context.Context) (Guest, error) {
			return Start(ctx, verifyConfig(opts, man, overlay, logDir, fwds, runtime))
		},
		Retry:        func() { _ = os.Rename(serial, serial+".1") },
		FallBack:     FallBackToTCG(&opts.Accel, emit),
		Until:        event.Ready,
		HelloTimeout: opts.Accel.Scale(HelloTimeout),
		Timeout:      opts.Timeout,
		Emit:         emit,
		Log:          opts.Log,
	}
	if err := sess.Run(ctx); err != nil {
		if ge := AsGuestError(err); ge != nil && opts.LogDir != "" {
			ge.Logs = []string{serial}
		}
		emit(event.New(event.Failed, failedService(err), err.Error()))
		return t, err
	}
	if err := CheckReachable(ctx, "verify", man, fwds, sess.Status().Ports); err != nil {
		sess.Abort(ctx)
		emit(event.New(event.Failed, failedService(err), err.Error()))
		return t, err
	}
	t = sess.Timings()
	t.Ready = time.Since(start)
	emit(event.New(event.StageDone, "boot", "every service healthy"))

	off, err := sess.Shutdown(ctx, opts.Accel.Scale(PowerOffTimeout))
	t.PowerOff = off
	if err != nil {
		emit(event.New(event.Failed, "", err.Error()))
		return t, err
	}
	emit(event.New(event.Done, man.Name, "verified"))
	return t, nil
}

// verifyConfig is the boot check's guest: the bundle's kernel and run-mode
// command line, on a throwaway overlay.
func verifyConfig(opts VerifyOptions, man bundle.Manifest, overlay, logDir string, fwds []proto.Forward, runtime string) Config {
	var fwcfg []qemu.FWCfgFile
	if len(fwds) > 0 {
		fwcfg = []qemu.FWCfgFile{{Name: proto.RuntimeFWCfg, Path: runtime}}
	}
	return Config{
		Forwards: fwds, FWCfg: fwcfg,
		Name: cmp.Or(opts.Name, "emu-verify-"+man.Name), Arch: man.Arch, VM: man.VM, Accel: opts.Accel,
		Kernel:  filepath.Join(opts.Bundle, store.BundleKernel),
		Initrd:  filepath.Join(opts.Bundle, store.BundleInitrd),
		Cmdline: man.Cmdline,
		Drive:   qemu.Drive{Path: overlay, Format: "qcow2", Discard: true, Cache: "unsafe"},
		Serial:  filepath.Join(logDir, store.SerialLog),
		Output:  filepath.Join(logDir, store.QEMULog),
		QEMU:    opts.QEMU, Log: opts.Log,
	}
}

// FreeForwards forwards every port of man's services to a free host port:
// the boot check must not need the ports an instance uses, which may be
// taken (by that instance, running).
func FreeForwards(man bundle.Manifest) ([]proto.Forward, error) {
	var fwds []proto.Forward
	for _, s := range man.Services {
		for _, p := range s.Ports {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("find a free host port for %s: %w", s.Name, err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			fwds = append(fwds, proto.Forward{Service: s.Name, Name: spec.PortName(p), Guest: p.Guest, Host: port})
		}
	}
	return fwds, nil
}

// failedService names the service a guest failure is about, if any.
func failedService(err error) string {
	if ge := AsGuestError(err); ge != nil {
		return ge.Service
	}
	return ""
}
