package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/agent"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/qmp"
	"github.com/emu-dev/emu/internal/store"
)

// Port is one forward of a running instance.
type Port struct {
	Service string `json:"service"`
	Name    string `json:"name"`
	Guest   int    `json:"guest"`
	Host    int    `json:"host"`
}

// URL is where the port listens on the host.
func (p Port) URL() string { return "127.0.0.1:" + strconv.Itoa(p.Host) }

// Info is how an instance was started; it is written as instance.json.
type Info struct {
	Name         string    `json:"name"`
	Bundle       string    `json:"bundle"`
	DiskSHA256   string    `json:"disk_sha256"`
	Accel        string    `json:"accel"`
	TimeoutScale float64   `json:"timeout_scale"`
	Ports        []Port    `json:"ports,omitempty"`
	Started      time.Time `json:"started"`
	PID          int       `json:"pid"`
	// Timings of the start that wrote this file.
	Timings Timings `json:"timings"`
}

// ErrNotRunning: the instance has no live QEMU.
var ErrNotRunning = errors.New("not running")

// Lock takes the instance's lock for one emu command; another command on
// the same instance gets a clear error instead of a second VM.
func Lock(inst store.Instance) (release func(), err error) {
	if err := os.MkdirAll(inst.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create instance directory %s: %w", inst.Dir, err)
	}
	f, err := os.OpenFile(inst.Lock(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", inst.Lock(), err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("instance %s is busy: another emu command is starting or stopping it", inst.Name)
		}
		return nil, fmt.Errorf("lock instance %s: %w", inst.Name, err)
	}
	// The kernel drops a flock when its holder dies, even by SIGKILL: a
	// stale lock cannot outlive the process that took it.
	return func() { f.Close() }, nil
}

// pidRecord is the pid file: the pid and the process's start time, so a
// recycled pid is never mistaken for our QEMU.
func writePID(path string, pid int) error {
	st, err := startTime(pid)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(fmt.Sprintf("%d %d\n", pid, st)), 0o644)
}

// errExited: the process has exited (its leader is a zombie), though
// its other threads may still be letting go of its files and ports.
var errExited = errors.New("process has exited")

// RunningPID returns the pid of the instance's live QEMU. A pid file whose
// process is gone (QEMU or emu killed with -9, a reboot) is stale: it and
// the sockets are removed, and ErrNotRunning returned.
func RunningPID(inst store.Instance) (int, error) {
	b, err := os.ReadFile(inst.PID())
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrNotRunning
	}
	if err != nil {
		return 0, err
	}
	var pid int
	var st uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &st); err == nil && pid > 0 {
		now, err := startTime(pid)
		if err == nil && now == st {
			return pid, nil
		}
		if errors.Is(err, errExited) {
			// Killed moments ago: wait until every thread is gone, so its
			// ports and sockets are free for the next start.
			waitExit(context.Background(), pid, 10*time.Second)
		}
	}
	clearRuntime(inst)
	return 0, ErrNotRunning
}

func clearRuntime(inst store.Instance) {
	for _, p := range []string{inst.PID(), inst.QMP(), inst.Agent()} {
		os.Remove(p)
	}
}

// ReadInfo loads instance.json.
func ReadInfo(inst store.Instance) (Info, error) {
	var info Info
	b, err := os.ReadFile(inst.State())
	if err != nil {
		return info, err
	}
	return info, json.Unmarshal(b, &info)
}

func writeInfo(inst store.Instance, info Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	tmp := inst.State() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, inst.State())
}

// UpOptions configure emu up.
type UpOptions struct {
	Instance store.Instance
	// DiskCache holds unpacked bundle disks (store.Home.DiskCache).
	DiskCache string
	Bundle    string
	Manifest  bundle.Manifest
	Accel     accel.Choice
	Ports     []Port
	Env       map[string]string
	Timeout   time.Duration
	Sink      event.Sink
	Log       *slog.Logger
	QEMU      string
}

// Up boots the instance detached from emu and returns once every service
// is healthy. The caller holds the instance's lock and has checked that it
// is not running and that its ports are free. On failure the guest is
// stopped again; the overlay (the data) is kept.
func Up(ctx context.Context, o UpOptions) (Info, error) {
	inst := o.Instance
	sum := o.Manifest.Files[store.BundleDisk].SHA256
	if err := os.MkdirAll(inst.Dir, 0o755); err != nil {
		return Info{}, fmt.Errorf("create instance directory %s: %w", inst.Dir, err)
	}
	info, ierr := ReadInfo(inst)
	if _, err := os.Stat(inst.Overlay()); err == nil && ierr == nil && info.DiskSHA256 != sum {
		return Info{}, &BootError{Op: "up", Err: fmt.Errorf("the image was rebuilt since this instance's data was created on it: " +
			"the data (overlay) no longer fits the new image; run `emu reset` to start fresh from the new image")}
	}
	if _, err := os.Stat(inst.Overlay()); errors.Is(err, os.ErrNotExist) {
		base, err := BaseDisk(ctx, o.DiskCache, o.Bundle, o.Manifest)
		if err != nil {
			return Info{}, err
		}
		if err := disk.CreateOverlay(ctx, command.Exec{}, base, inst.Overlay()); err != nil {
			return Info{}, err
		}
	}
	rt := agent.Runtime{Instance: inst.Name, Env: o.Env}
	var fwd []qemu.Forward
	for _, p := range o.Ports {
		fwd = append(fwd, qemu.Forward{HostAddr: "127.0.0.1", HostPort: p.Host, GuestPort: p.Guest})
		rt.Ports = append(rt.Ports, agent.RuntimePort{Service: p.Service, Name: p.Name, Guest: p.Guest, Host: p.Host})
	}
	rb, err := json.Marshal(rt)
	if err != nil {
		return Info{}, err
	}
	if err := os.WriteFile(inst.Runtime(), rb, 0o600); err != nil {
		return Info{}, fmt.Errorf("write runtime config: %w", err)
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Duration(float64(3*time.Minute) * max(o.Accel.TimeoutScale, 1))
	}
	emit := func(e event.Event) {
		if o.Sink != nil {
			o.Sink.Emit(e)
		}
	}
	info, err = boot(ctx, o, fwd, emit)
	if crash := earlyCrash(err); crash != "" && ctx.Err() == nil {
		// The kernel died before the agent started: nothing of the
		// stack ran yet. Under TCG that is rare, and another boot works.
		msg := BootAgain(crash)
		emit(event.New(event.Log, "", msg))
		if o.Log != nil {
			o.Log.Warn(msg, "console", inst.Serial()+".1")
		}
		info, err = boot(ctx, o, fwd, emit)
	}
	if err != nil {
		emit(event.New(event.Failed, "", err.Error()))
		return Info{}, err
	}
	emit(event.New(event.Done, inst.Name, "ready"))
	return info, nil
}

// boot starts QEMU on the instance's overlay and waits until every service
// is healthy. When the guest does not get there, it is stopped cleanly and
// the data is kept.
func boot(ctx context.Context, o UpOptions, fwd []qemu.Forward, emit func(event.Event)) (Info, error) {
	inst := o.Instance
	// Keep the previous boot's console: the one to read after a failed start.
	_ = os.Rename(inst.Serial(), inst.Serial()+".1")
	start := time.Now()
	vm, err := Start(ctx, Config{
		Name: "emu-" + inst.Name, Arch: o.Manifest.Arch, VM: o.Manifest.VM, Accel: o.Accel,
		Kernel:      filepath.Join(o.Bundle, store.BundleKernel),
		Initrd:      filepath.Join(o.Bundle, store.BundleInitrd),
		Cmdline:     o.Manifest.Cmdline,
		Drive:       qemu.Drive{Path: inst.Overlay(), Format: "qcow2", Discard: true},
		Serial:      inst.Serial(),
		Output:      inst.QEMULog(),
		AgentSocket: inst.Agent(),
		QMPSocket:   inst.QMP(),
		Forwards:    fwd,
		FWCfg:       []qemu.FWCfgFile{{Name: agent.RuntimeFWCfg, Path: inst.Runtime()}},
		Detach:      true,
		QEMU:        o.QEMU,
		Log:         o.Log,
	})
	if err != nil {
		return Info{}, err
	}
	defer vm.Close()
	started := time.Since(start)
	info := Info{
		Name: inst.Name, Bundle: o.Bundle, DiskSHA256: o.Manifest.Files[store.BundleDisk].SHA256, Accel: string(o.Accel.Accel),
		TimeoutScale: o.Accel.TimeoutScale, Ports: o.Ports, Started: start.UTC(), PID: vm.Proc.Pid,
	}
	if err := writePID(inst.PID(), vm.Proc.Pid); err != nil {
		vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		return Info{}, fmt.Errorf("write pid file: %w", err)
	}
	if err := writeInfo(inst, info); err != nil {
		vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		return Info{}, fmt.Errorf("write instance state: %w", err)
	}
	t, err := waitReady(ctx, vm, o.Timeout, emit)
	t.Start = started
	if err == nil {
		t.Ready = time.Since(start)
		info.Timings = t
		err = writeInfo(inst, info)
	}
	if err != nil {
		// Not ready: stop it cleanly, keep the data, report why. The agent's
		// channel takes one client at a time: let go of ours first.
		vm.Close()
		Stop(context.WithoutCancel(ctx), inst, o.Log, func(string) {})
		var ue *BootError
		if errors.As(err, &ue) {
			ue.Logs = []string{inst.Serial(), inst.QEMULog()}
			ue.hello = t.Hello > 0
		}
		return Info{}, err
	}
	return info, nil
}

// earlyCrash is the kernel's crash line when err is a guest whose kernel
// crashed before the agent said hello, else "".
func earlyCrash(err error) string {
	var be *BootError
	if errors.As(err, &be) && !be.hello {
		return be.Crash
	}
	return ""
}

// waitReady follows the agent's events until every service is healthy. The
// timings it returns count from its own start.
func waitReady(ctx context.Context, vm *VM, timeout time.Duration, emit func(event.Event)) (Timings, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var t Timings
	begin := time.Now()
	var status event.Status
	for {
		select {
		case e, ok := <-vm.Events:
			if !ok {
				return t, consoleError(vm, vm.Gone("every service was healthy"))
			}
			status = event.Fold(status, e)
			if !e.Kind.Terminal() {
				emit(e)
			}
			switch e.Kind {
			case event.Hello:
				t.Hello = time.Since(begin)
			case event.Ready:
				t.Services = time.Since(begin) - t.Hello
				return t, nil
			case event.ServiceUnhealthy:
				ue := &BootError{Op: "up", Service: e.Name, Err: errors.New(e.Msg)}
				if j := e.Fields["journal"]; j != "" {
					ue.Tail, ue.TailFrom = command.LastLines(j, 20), "its journal"
				}
				return t, ue
			case event.Failed:
				if e.Name == "" {
					return t, consoleError(vm, errors.New(e.Msg))
				}
				return t, &BootError{Op: "up", Service: e.Name, Err: errors.New(e.Msg)}
			}
		case <-vm.Proc.Done():
			return t, consoleError(vm, vm.Gone("every service was healthy"))
		case <-ctx.Done():
			ue := consoleError(vm, fmt.Errorf("not ready within %s: %w", timeout, ctx.Err()))
			for _, it := range status.Services {
				if it.State != event.Healthy {
					ue.Service = it.Name
					break
				}
			}
			return t, ue
		}
	}
}

// failedService names the service a BootError is about, if any.
func failedService(err error) string {
	var be *BootError
	if errors.As(err, &be) {
		return be.Service
	}
	return ""
}

func consoleError(vm *VM, err error) *BootError {
	ue := &BootError{Op: "up", Err: err}
	if c, rerr := ReadConsole(vm.SerialPath, 30); rerr == nil {
		ue.Err, ue.Tail, ue.TailFrom, ue.Crash = c.Explain(err), c.Tail, "the serial console", c.Crash
	}
	return ue
}

// Stop shuts the instance down, each way tried only when the one before
// did not end QEMU in time: the agent (services stop cleanly, filesystems
// unmount), ACPI power-down over QMP, SIGTERM, SIGKILL. say reports each
// step. The overlay is kept; sockets and the pid file are removed.
func Stop(ctx context.Context, inst store.Instance, log *slog.Logger, say func(string)) error {
	pid, err := RunningPID(inst)
	if err != nil {
		return err
	}
	info, _ := ReadInfo(inst)
	scale := max(info.TimeoutScale, 1)
	exited := func(d time.Duration) bool { return waitExit(ctx, pid, time.Duration(float64(d)*scale)) }
	defer clearRuntime(inst)

	say("asking the guest agent to shut down")
	if vm, err := Connect(ctx, inst.Agent()); err == nil {
		serr := vm.Send(event.Request{Op: event.OpShutdown})
		if serr == nil && exited(30*time.Second) {
			vm.Close()
			say("guest powered off")
			return nil
		}
		vm.Close()
	} else if log != nil {
		log.Debug("agent unreachable", "err", err)
	}
	say("sending ACPI power-down over QMP")
	if err := PowerDown(ctx, inst.QMP()); err == nil && exited(20*time.Second) {
		say("guest powered off")
		return nil
	} else if err != nil {
		say("qmp: " + err.Error())
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stop %s: interrupted: %w", inst.Name, err)
	}
	say("sending SIGTERM to qemu")
	syscall.Kill(pid, syscall.SIGTERM)
	if waitExit(ctx, pid, 10*time.Second) {
		return nil
	}
	say("sending SIGKILL to qemu")
	syscall.Kill(pid, syscall.SIGKILL)
	if waitExit(ctx, pid, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("stop %s: qemu %d did not exit after SIGKILL", inst.Name, pid)
}

// PowerDown asks QEMU for an ACPI power-down over a negotiated QMP
// connection.
func PowerDown(ctx context.Context, sock string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.PowerDown(ctx)
}

// QEMUStatus asks QEMU for the guest's run state (running, paused, ...).
func QEMUStatus(ctx context.Context, sock string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return "", err
	}
	defer c.Close()
	st, err := c.Status(ctx)
	return st.Status, err
}

// AgentStatus asks the agent to replay the services' state and folds what
// it sends within d.
func AgentStatus(ctx context.Context, sock string, d time.Duration) (event.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var st event.Status
	vm, err := Connect(ctx, sock)
	if err != nil {
		return st, err
	}
	defer vm.Close()
	if err := vm.Send(event.Request{Op: event.OpStatus}); err != nil {
		return st, err
	}
	for {
		select {
		case e, ok := <-vm.Events:
			if !ok {
				return st, nil
			}
			st = event.Fold(st, e)
			if e.Kind == event.Ready {
				return st, nil
			}
		case <-ctx.Done():
			if st.Hello == nil {
				return st, fmt.Errorf("the agent did not answer within %s (another emu command may hold its channel)", d)
			}
			return st, nil
		}
	}
}
