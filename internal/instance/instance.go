// Package instance is what belongs to one instance of a bundle on this
// host and its life: the lock, the pid record, instance.json, starting it
// detached (Up), stopping it, and the disk cache entries instances and
// images keep alive (PruneDisks). Booting and following the guest itself
// is machine.Session's.
package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/qmp"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// Info is how an instance was started; it is written as instance.json.
type Info struct {
	Name         string          `json:"name"`
	Bundle       string          `json:"bundle"`
	DiskSHA256   string          `json:"disk_sha256"`
	Accel        string          `json:"accel"`
	TimeoutScale float64         `json:"timeout_scale"`
	Ports        []proto.Forward `json:"ports,omitempty"`
	// Connect are the stack's connect values for this start (its ports).
	Connect map[string]string `json:"connect,omitempty"`
	Started time.Time         `json:"started"`
	PID     int               `json:"pid"`
	// Timings of the start that wrote this file.
	Timings machine.Timings `json:"timings"`
	// Start says how the guest started: StartCold, StartResumed or
	// StartTemplate.
	Start string `json:"start,omitempty"`
	// Resumable: the guest's agent answers a resume, so down may suspend
	// it. Key is what a state saved from this QEMU depends on.
	Resumable bool             `json:"resumable,omitempty"`
	Key       machine.StateKey `json:"key,omitzero"`
}

// ErrNotRunning: the instance has no live QEMU.
var ErrNotRunning = errors.New("not running")

// Lock takes the instance's lock for one emu command; another command on
// the same instance gets a clear error instead of a second VM.
func Lock(inst store.Instance) (release func(), err error) {
	if err := os.MkdirAll(inst.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create instance directory %s: %w", inst.Dir, err)
	}
	f, err := os.OpenFile(inst.Lock(), os.O_RDWR|os.O_CREATE, 0o600)
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
	return os.WriteFile(path, []byte(fmt.Sprintf("%d %d\n", pid, st)), 0o600)
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
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
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
	Ports     []proto.Forward
	Env       map[string]string
	// Connect are the stack's connect templates, rendered into Info.
	Connect map[string]string
	Timeout time.Duration
	Sink    event.Sink
	Log     *slog.Logger
	QEMU    string
	// NoTemplate neither starts a fresh instance from the image's ready
	// snapshot nor saves one.
	NoTemplate bool
	// Cold boots the guest: a saved state is discarded, the ready
	// snapshot not used.
	Cold bool

	connect map[string]string // Connect rendered
	key     machine.StateKey  // what a state of this start depends on
}

// RenderConnect renders connect templates for an instance named name with
// ports forwarded.
func RenderConnect(tmpls map[string]string, name string, ports []proto.Forward) (map[string]string, error) {
	if len(tmpls) == 0 {
		return nil, nil
	}
	v := spec.ConnectValues{Instance: name, Ports: map[string]int{}}
	for _, p := range ports {
		v.Ports[p.Key()] = p.Host
	}
	out := map[string]string{}
	for k, t := range tmpls {
		val, err := spec.ExpandConnect(t, v)
		if err != nil {
			return nil, fmt.Errorf("connect.%s: %w", k, err)
		}
		out[k] = val
	}
	return out, nil
}

// step is one named step of a start; undo, when set, reverses it if a
// later step fails. The steps run in order and undo in reverse, so a
// failure at any step undoes exactly the steps before it.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context)
}

// runSteps runs steps in order; when one fails, the undos of those before
// it run last-in, first-out, and its error is returned as it is (the
// steps' errors name what they did).
func runSteps(ctx context.Context, log *slog.Logger, steps []step) error {
	for i, st := range steps {
		log.Debug("start step", "step", st.name)
		if err := st.do(ctx); err != nil {
			log.Debug("start step failed", "step", st.name, "err", err)
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					log.Debug("undo start step", "step", steps[j].name)
					steps[j].undo(context.WithoutCancel(ctx))
				}
			}
			return err
		}
	}
	return nil
}

// Up boots the instance detached from emu and returns once every service
// is healthy. The caller holds the instance's lock and has checked that it
// is not running and that its ports are free. On failure the guest is
// stopped again; the overlay (the data) is always kept.
func Up(ctx context.Context, o UpOptions) (Info, error) {
	inst := o.Instance
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = o.Accel.Scale(machine.ReadyTimeout)
	}
	emit := func(e event.Event) {
		if o.Sink != nil {
			o.Sink.Emit(e)
		}
	}
	sum := o.Manifest.Files[store.BundleDisk].SHA256
	var sess *machine.Session
	var info Info
	var src *source // what the boot resumes from; nil: cold
	var fresh bool  // the overlay was made by this start
	var restore time.Duration
	say := func(msg string) {
		emit(event.New(event.Log, inst.Name, msg))
		o.Log.Info(msg)
	}
	// session follows one start of the guest, booted or resumed.
	session := func(boot func(ctx context.Context) (machine.Guest, error)) *machine.Session {
		return &machine.Session{
			Op:           "up",
			Boot:         boot,
			Until:        event.Ready,
			HelloTimeout: o.Accel.Scale(machine.HelloTimeout),
			Timeout:      o.Timeout,
			Emit:         emit,
			// Not ready: stop it cleanly and keep the data. The
			// agent's channel takes one client at a time: let go
			// of ours first.
			Stop: func(ctx context.Context, g machine.Guest) {
				g.Close()
				Stop(ctx, inst, o.Log, nil)
			},
			Log: o.Log,
		}
	}
	cold := func(ctx context.Context) error {
		if err := removeSavedState(inst); err != nil {
			return fmt.Errorf("remove the saved state: %w", err)
		}
		sess = session(func(ctx context.Context) (machine.Guest, error) { return startInstance(ctx, o, sum, StartCold) })
		sess.Retry = func() { _ = os.Rename(inst.Serial(), inst.Serial()+".1") }
		sess.FallBack = machine.FallBackToTCG(&o.Accel, emit)
		return sess.Run(ctx)
	}
	resume := func(ctx context.Context) error {
		rt := runtimeConfig(o)
		sess = session(func(ctx context.Context) (machine.Guest, error) {
			g, load, err := machine.Resume(ctx, machine.ResumeOptions{
				Config: bootConfig(o), State: src.state, Runtime: &rt,
				Started: func(vm *machine.VM) error { return recordStart(o, sum, vm.Proc.Pid, src.kind) },
				Consume: func() error {
					if src.kind == StartResumed {
						return removeSavedState(inst)
					}
					return nil
				},
			})
			restore = load
			return g, err
		})
		// A resumed agent answers at once: one that does not is not
		// waited for as long as a boot, the cold boot after is.
		sess.HelloTimeout = min(sess.HelloTimeout, machine.ResumeHelloTimeout)
		return sess.Run(ctx)
	}
	err := runSteps(ctx, o.Log, []step{
		{name: "directory", do: func(context.Context) error {
			if err := os.MkdirAll(inst.Dir, 0o700); err != nil {
				return fmt.Errorf("create instance directory %s: %w", inst.Dir, err)
			}
			return nil
		}},
		{name: "check data", do: func(context.Context) error { return checkData(inst, sum) }},
		{name: "plan", do: func(ctx context.Context) error {
			var err error
			if o.key, err = machine.Key(ctx, bootConfig(o), sum); err != nil {
				say("cannot resume or use a ready snapshot: " + err.Error())
				return nil
			}
			_, serr := os.Stat(inst.Overlay())
			var why string
			src, why = pickSource(o, o.key, serr == nil)
			if why != "" {
				say(why)
			}
			return nil
		}},
		// The overlay is the user's data: never undone, also when it was
		// made by this start.
		{name: "overlay", do: func(ctx context.Context) error {
			if src != nil && src.kind == StartTemplate {
				fresh = true
				return copyFile(src.overlay, inst.Overlay())
			}
			var err error
			fresh, err = ensureOverlay(ctx, o)
			return err
		}},
		{name: "connect values", do: func(context.Context) error {
			var err error
			o.connect, err = RenderConnect(o.Connect, inst.Name, o.Ports)
			return err
		}},
		{name: "runtime config", do: func(context.Context) error { return writeRuntime(inst, o) }},
		{name: "console", do: func(context.Context) error {
			// Keep the previous boot's console: the one to read after a
			// failed start.
			_ = os.Rename(inst.Serial(), inst.Serial()+".1")
			return nil
		}},
		{
			name: "boot",
			do: func(ctx context.Context) error {
				if src == nil {
					return cold(ctx)
				}
				err := resume(ctx)
				if err == nil || ctx.Err() != nil {
					return err
				}
				// A guest that resumed and answered failed for a reason of
				// its own (a service unhealthy): that is the error.
				var re *machine.RestoreError
				if !errors.As(err, &re) && sess.Status().Hello != nil {
					return err
				}
				// A state that does not restore costs a cold boot, never
				// the data: the guest either never ran, or was stopped
				// as a failed start is.
				say("could not resume (" + oneLine(err) + "): booting cold")
				if src.kind == StartTemplate {
					// A snapshot that does not restore is of no use to
					// anyone: this start saves a new one. The instance is
					// fresh: its data is the template's copy.
					os.RemoveAll(filepath.Dir(src.state))
					os.Remove(inst.Overlay())
					if _, err := ensureOverlay(ctx, o); err != nil {
						return err
					}
				}
				src, restore = nil, 0
				return cold(ctx)
			},
			undo: func(ctx context.Context) { sess.Abort(ctx) },
		},
		{name: "reachable", do: func(ctx context.Context) error {
			return machine.CheckReachable(ctx, "up", o.Manifest, o.Ports, sess.Status().Ports)
		}},
		{name: "record", do: func(context.Context) error {
			var err error
			if info, err = ReadInfo(inst); err != nil {
				return fmt.Errorf("read instance state: %w", err)
			}
			info.Timings = sess.Timings()
			info.Timings.Restore = restore
			if h := sess.Status().Hello; h != nil {
				info.Resumable = h.Fields[proto.FieldResume] == "true"
			}
			return writeInfo(inst, info)
		}},
		{name: "ready snapshot", do: func(ctx context.Context) error {
			// The first up of an image on this host, on fresh data, keeps
			// the moment it became ready for every later fresh start.
			if src != nil || !fresh || o.NoTemplate || !info.Resumable || len(o.key.Argv) == 0 {
				return nil
			}
			if _, ok := validTemplate(o.DiskCache, o.key); ok {
				return nil
			}
			say("saving a ready snapshot of this image: fresh instances of it will start from it")
			saved, err := captureTemplate(ctx, o, o.key)
			if err != nil {
				say("could not save the ready snapshot: " + err.Error())
				return nil
			}
			// The pause left the guest's clock behind: the agent steps it.
			if g := sess.Guest(); g != nil {
				_ = g.Send(proto.Request{Op: proto.OpResume, ID: "after-snapshot", Time: time.Now()})
			}
			info.Timings.Snapshot = saved.Took
			say(fmt.Sprintf("ready snapshot saved in %s (%s)", saved.Took.Round(time.Millisecond), progress.Humanize(saved.Size)))
			return writeInfo(inst, info)
		}},
	})
	if sess != nil && sess.Guest() != nil {
		sess.Guest().Close()
	}
	if err != nil {
		if ge := machine.AsGuestError(err); ge != nil {
			ge.Logs = []string{inst.Serial(), inst.QEMULog()}
		}
		emit(event.New(event.Failed, "", err.Error()))
		return Info{}, err
	}
	emit(event.New(event.Done, inst.Name, "ready"))
	return info, nil
}

// checkData refuses an overlay written over another image: its blocks
// only make sense on top of the disk they were written over.
func checkData(inst store.Instance, sum string) error {
	info, err := ReadInfo(inst)
	if _, serr := os.Stat(inst.Overlay()); serr == nil && err == nil && info.DiskSHA256 != sum {
		return &machine.GuestError{Op: "up", Err: errors.New("the image was rebuilt since this instance's data was created on it: " +
			"the data (overlay) no longer fits the new image; run `emu reset` to start fresh from the new image")}
	}
	return nil
}

// ensureOverlay makes the instance's overlay on the bundle's unpacked disk
// when it has none yet.
func ensureOverlay(ctx context.Context, o UpOptions) (created bool, err error) {
	if _, err := os.Stat(o.Instance.Overlay()); !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	base, err := machine.BaseDisk(ctx, o.DiskCache, o.Bundle, o.Manifest)
	if err != nil {
		return false, err
	}
	return true, disk.CreateOverlay(ctx, command.Exec{}, base, o.Instance.Overlay())
}

// writeRuntime writes the runtime config the guest reads at boot.
func writeRuntime(inst store.Instance, o UpOptions) error {
	rb, err := json.Marshal(runtimeConfig(o))
	if err != nil {
		return err
	}
	if err := os.WriteFile(inst.Runtime(), rb, 0o600); err != nil {
		return fmt.Errorf("write runtime config: %w", err)
	}
	return nil
}

// runtimeConfig is the per-start config the guest gets: at boot through
// fw_cfg, on a resume in the request.
func runtimeConfig(o UpOptions) proto.Runtime {
	return proto.Runtime{Instance: o.Instance.Name, Env: o.Env, Ports: o.Ports}
}

// bootConfig is the instance's guest: detached, on its overlay, with its
// sockets at paths in the instance directory, its forwards and the runtime
// config.
func bootConfig(o UpOptions) machine.Config {
	inst := o.Instance
	return machine.Config{
		Name: "emu-" + inst.Name, Arch: o.Manifest.Arch, VM: o.Manifest.VM, Accel: o.Accel,
		Kernel:  filepath.Join(o.Bundle, store.BundleKernel),
		Initrd:  filepath.Join(o.Bundle, store.BundleInitrd),
		Cmdline: o.Manifest.Cmdline,
		// A full host filesystem pauses the guest: its writes wait, none
		// is lost (Paused says why; Unpause retries them).
		Drive:       qemu.Drive{Path: inst.Overlay(), Format: "qcow2", Discard: true, PauseWhenFull: true},
		Serial:      inst.Serial(),
		Output:      inst.QEMULog(),
		AgentSocket: inst.Agent(),
		QMPSocket:   inst.QMP(),
		Forwards:    o.Ports,
		FWCfg:       []qemu.FWCfgFile{{Name: proto.RuntimeFWCfg, Path: inst.Runtime()}},
		Detach:      true,
		QEMU:        o.QEMU,
		Log:         o.Log,
	}
}

// startInstance starts the instance's QEMU, detached, on its overlay, and
// records its pid and instance.json, so that every later command finds it
// even while it boots.
func startInstance(ctx context.Context, o UpOptions, sum, kind string) (*machine.VM, error) {
	vm, err := machine.Start(ctx, bootConfig(o))
	if err != nil {
		return nil, err
	}
	if err := recordStart(o, sum, vm.Proc.Pid, kind); err != nil {
		vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
		return nil, err
	}
	return vm, nil
}

// recordStart writes the pid file and instance.json of a QEMU just started.
func recordStart(o UpOptions, sum string, pid int, kind string) error {
	inst := o.Instance
	info := Info{
		Name: inst.Name, Bundle: o.Bundle, DiskSHA256: sum, Accel: string(o.Accel.Accel),
		TimeoutScale: o.Accel.TimeoutScale, Ports: o.Ports, Connect: o.connect, Started: time.Now().UTC(), PID: pid,
		Start: kind, Key: o.key,
	}
	if err := writePID(inst.PID(), pid); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := writeInfo(inst, info); err != nil {
		return fmt.Errorf("write instance state: %w", err)
	}
	return nil
}

// oneLine is err's first line.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// Stop shuts the instance down, each way tried only when the one before
// did not end QEMU in time: the agent (services stop cleanly, filesystems
// unmount), ACPI power-down over QMP, SIGTERM, SIGKILL. Each step is a log
// event to sink (nil: none). The overlay is kept; sockets and the pid
// file are removed.
func Stop(ctx context.Context, inst store.Instance, log *slog.Logger, sink event.Sink) error {
	say := func(msg string) {
		if sink != nil {
			sink.Emit(event.New(event.Log, inst.Name, msg))
		}
	}
	pid, err := RunningPID(inst)
	if err != nil {
		return err
	}
	info, _ := ReadInfo(inst)
	exited := func(d time.Duration) bool { return waitExit(ctx, pid, accel.Scale(d, info.TimeoutScale)) }
	defer clearRuntime(inst)

	say("asking the guest agent to shut down")
	if vm, err := machine.Connect(ctx, inst.Agent()); err == nil {
		serr := vm.Send(proto.Request{Op: proto.OpShutdown})
		if serr == nil && exited(machine.PowerOffTimeout) {
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
