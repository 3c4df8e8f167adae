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
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
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
		return Info{}, &GuestError{Op: "up", Err: fmt.Errorf("the image was rebuilt since this instance's data was created on it: " +
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
	rt := proto.Runtime{Instance: inst.Name, Env: o.Env}
	var fwd []qemu.Forward
	for _, p := range o.Ports {
		fwd = append(fwd, qemu.Forward{HostAddr: "127.0.0.1", HostPort: p.Host, GuestPort: p.Guest})
		rt.Ports = append(rt.Ports, proto.RuntimePort{Service: p.Service, Name: p.Name, Guest: p.Guest, Host: p.Host})
	}
	rb, err := json.Marshal(rt)
	if err != nil {
		return Info{}, err
	}
	if err := os.WriteFile(inst.Runtime(), rb, 0o600); err != nil {
		return Info{}, fmt.Errorf("write runtime config: %w", err)
	}
	if o.Timeout <= 0 {
		o.Timeout = o.Accel.Scale(ReadyTimeout)
	}
	emit := func(e event.Event) {
		if o.Sink != nil {
			o.Sink.Emit(e)
		}
	}
	// Keep the previous boot's console: the one to read after a failed start.
	_ = os.Rename(inst.Serial(), inst.Serial()+".1")
	sess := &Session{
		Op: "up",
		Boot: func(ctx context.Context) (Guest, error) {
			return startInstance(ctx, o, fwd, sum)
		},
		Retry:        func() { _ = os.Rename(inst.Serial(), inst.Serial()+".1") },
		Until:        event.Ready,
		HelloTimeout: o.Accel.Scale(HelloTimeout),
		Timeout:      o.Timeout,
		Emit:         emit,
		// Not ready: stop it cleanly and keep the data. The agent's
		// channel takes one client at a time: let go of ours first.
		Stop: func(ctx context.Context, g Guest) {
			g.Close()
			Stop(ctx, inst, o.Log, func(string) {})
		},
		Log: o.Log,
	}
	err = sess.Run(ctx)
	if err == nil {
		info, err = ReadInfo(inst)
	}
	if err == nil {
		info.Timings = sess.Timings()
		err = writeInfo(inst, info)
		if err != nil {
			sess.stop(ctx, sess.Guest())
		}
	}
	if g := sess.Guest(); g != nil {
		g.Close()
	}
	if err != nil {
		if ge := AsGuestError(err); ge != nil {
			ge.Logs = []string{inst.Serial(), inst.QEMULog()}
		}
		emit(event.New(event.Failed, "", err.Error()))
		return Info{}, err
	}
	emit(event.New(event.Done, inst.Name, "ready"))
	return info, nil
}

// startInstance starts the instance's QEMU, detached, on its overlay, and
// records its pid and instance.json, so that every later command finds it
// even while it boots.
func startInstance(ctx context.Context, o UpOptions, fwd []qemu.Forward, sum string) (*VM, error) {
	inst := o.Instance
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
		FWCfg:       []qemu.FWCfgFile{{Name: proto.RuntimeFWCfg, Path: inst.Runtime()}},
		Detach:      true,
		QEMU:        o.QEMU,
		Log:         o.Log,
	})
	if err != nil {
		return nil, err
	}
	info := Info{
		Name: inst.Name, Bundle: o.Bundle, DiskSHA256: sum, Accel: string(o.Accel.Accel),
		TimeoutScale: o.Accel.TimeoutScale, Ports: o.Ports, Started: time.Now().UTC(), PID: vm.Proc.Pid,
	}
	if err := writePID(inst.PID(), vm.Proc.Pid); err != nil {
		vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		return nil, fmt.Errorf("write pid file: %w", err)
	}
	if err := writeInfo(inst, info); err != nil {
		vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		return nil, fmt.Errorf("write instance state: %w", err)
	}
	return vm, nil
}

// failedService names the service a guest failure is about, if any.
func failedService(err error) string {
	if ge := AsGuestError(err); ge != nil {
		return ge.Service
	}
	return ""
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
	exited := func(d time.Duration) bool { return waitExit(ctx, pid, accel.Scale(d, info.TimeoutScale)) }
	defer clearRuntime(inst)

	say("asking the guest agent to shut down")
	if vm, err := Connect(ctx, inst.Agent()); err == nil {
		serr := vm.Send(proto.Request{Op: proto.OpShutdown})
		if serr == nil && exited(PowerOffTimeout) {
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
	if err := vm.Send(proto.Request{Op: proto.OpStatus}); err != nil {
		return st, err
	}
	end, _ := follow(ctx, vm, nil, func(e event.Event) (bool, error) {
		st = event.Fold(st, e)
		return e.Kind == event.Ready, nil
	})
	if end == endCtx && st.Hello == nil {
		return st, fmt.Errorf("the agent did not answer within %s (another emu command may hold its channel)", d)
	}
	return st, nil
}
