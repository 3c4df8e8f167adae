package machine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/qemu"
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

// Timings split a boot check.
type Timings struct {
	Start    time.Duration `json:"qemu_start_ns"` // QEMU started and channel connected
	Hello    time.Duration `json:"boot_ns"`       // boot to the agent's hello
	Services time.Duration `json:"services_ns"`   // hello to every service healthy
	Ready    time.Duration `json:"ready_ns"`      // total: start to ready
	PowerOff time.Duration `json:"power_off_ns,omitempty"`
}

// BootError is a guest that did not become ready: in a boot check or in
// emu up. Tail is the failing service's journal or the serial console.
type BootError struct {
	Op       string // "verify" or "up"
	Err      error
	Service  string
	Tail     []string
	TailFrom string
	Logs     []string
	// Crash is the guest kernel's crash line, when the console has one.
	Crash string
	// hello: the agent had said hello (the boot got that far).
	hello bool
}

func (e *BootError) Error() string {
	if e.Service != "" {
		return fmt.Sprintf("%s: service %s: %v", e.Op, e.Service, e.Err)
	}
	return e.Op + ": " + e.Err.Error()
}

func (e *BootError) Unwrap() error { return e.Err }

// Detail lists the tail and the logs.
func (e *BootError) Detail() string {
	s := ""
	if len(e.Tail) > 0 {
		s += fmt.Sprintf("last %d lines of %s:\n", len(e.Tail), e.TailFrom)
		for _, l := range e.Tail {
			s += "  | " + l + "\n"
		}
	}
	for _, l := range e.Logs {
		s += "log: " + l + "\n"
	}
	return s
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
		opts.Timeout = time.Duration(float64(3*time.Minute) * max(opts.Accel.TimeoutScale, 1))
	}
	emit := func(e event.Event) {
		if opts.Sink != nil {
			opts.Sink.Emit(e)
		}
	}
	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
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
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		return t, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	start := time.Now()
	emit(event.New(event.StageStart, "boot", man.Name))
	serial := filepath.Join(logDir, store.SerialLog)
	var vm *VM
	var ready Timings
	for attempt := 1; ; attempt++ {
		vm, err = Start(ctx, Config{
			Name: cmp.Or(opts.Name, "emu-verify-"+man.Name), Arch: man.Arch, VM: man.VM, Accel: opts.Accel,
			Kernel:  filepath.Join(opts.Bundle, store.BundleKernel),
			Initrd:  filepath.Join(opts.Bundle, store.BundleInitrd),
			Cmdline: man.Cmdline,
			Drive:   qemu.Drive{Path: overlay, Format: "qcow2", Discard: true, Cache: "unsafe"},
			Serial:  serial,
			Output:  filepath.Join(logDir, store.QEMULog),
			QEMU:    opts.QEMU, Log: opts.Log,
		})
		if err != nil {
			emit(event.New(event.Failed, "", err.Error()))
			return t, err
		}
		defer vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		t.Start = time.Since(start)
		ready, err = waitReady(ctx, vm, opts.Timeout, emit)
		var be *BootError
		if errors.As(err, &be) {
			be.hello = ready.Hello > 0
		}
		crash := earlyCrash(err)
		if attempt > 1 || crash == "" || ctx.Err() != nil {
			break
		}
		// As emu up does: a kernel that died before the agent started
		// ran nothing of the image; under TCG the next boot works.
		emit(event.New(event.Log, "", BootAgain(crash)))
		vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		_ = os.Rename(serial, serial+".1")
	}
	if err != nil {
		var be *BootError
		if errors.As(err, &be) {
			be.Op = "verify"
			if opts.LogDir != "" {
				be.Logs = []string{vm.SerialPath}
			}
		}
		emit(event.New(event.Failed, failedService(err), err.Error()))
		return t, err
	}
	t.Hello, t.Services = ready.Hello, ready.Services
	t.Ready = time.Since(start)
	emit(event.New(event.StageDone, "boot", "every service healthy"))

	off := time.Now()
	if err := vm.Send(event.Request{Op: event.OpShutdown}); err != nil {
		emit(event.New(event.Failed, "", err.Error()))
		return t, err
	}
	wait := time.NewTimer(time.Duration(float64(60*time.Second) * max(opts.Accel.TimeoutScale, 1)))
	defer wait.Stop()
	for done := false; !done; {
		select {
		case e, ok := <-vm.Events:
			if ok {
				if !e.Kind.Terminal() {
					emit(e)
				}
				continue
			}
			<-vm.Proc.Done()
			done = true
		case <-vm.Proc.Done():
			done = true
		case <-wait.C:
			emit(event.New(event.Log, "", "guest did not power off in time; stopping qemu"))
			done = true
		case <-ctx.Done():
			done = true
		}
	}
	vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
	t.PowerOff = time.Since(off)
	emit(event.New(event.Done, man.Name, "verified"))
	return t, nil
}
