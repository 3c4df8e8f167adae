package build

import (
	"context"
	"os"

	"path/filepath"
	"time"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/guest"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// provision boots the disk, runs the bake in the guest and waits for it to
// power off. A machine.Session follows the guest: it decides on whichever
// comes first, the agent's done or failed, QEMU exiting, a timeout, or ctx
// ending; no polling.
func (b *builder) provision(ctx context.Context) (stageResult, error) {
	s := b.opts.Stack
	acc := b.opts.Accel
	total := acc.Scale(machine.HelloTimeout+machine.PowerOffTimeout) + 2*time.Minute
	for _, st := range s.Bake {
		total += st.Timeout.D()
	}
	for _, name := range s.ServiceNames() {
		total += s.Services[name].Health.Timeout.D()
	}
	total += b.bins.budget

	req := b.request()
	raw := b.rawDisk()
	serial := filepath.Join(b.logs, store.SerialLog)
	sess := &machine.Session{
		Boot: func(ctx context.Context) (machine.Guest, error) {
			return machine.Start(ctx, b.provisionConfig())
		},
		Retry:    func() { _ = os.Rename(serial, serial+".1") },
		FallBack: machine.FallBackToTCG(&b.opts.Accel, b.emit),
		Until:    event.Done,
		Hello:    []proto.Request{req},
		// The step waits for the ack: once the agent has it, a crash in
		// the step is known to be the step's.
		AckSteps:     true,
		HelloTimeout: acc.Scale(machine.HelloTimeout),
		Timeout:      total,
		Emit: func(e event.Event) {
			b.emit(e)
			b.observe(e)
		},
		// The guest's verdict; the build's own done or failed ends the
		// build's stream.
		Verdict: b.record,
		Log:     b.opts.Log,
	}
	if err := sess.Run(ctx); err != nil {
		return stageResult{}, err
	}
	// The agent synced and trimmed before done; QEMU flushes on SIGTERM if
	// the guest does not power off in time.
	if _, err := sess.PowerOff(ctx, acc.Scale(machine.PowerOffTimeout)); err != nil {
		return stageResult{}, err
	}
	alloc, err := disk.Allocated(raw)
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Size: alloc}, nil
}

// provisionConfig is the provisioning guest: the raw disk, writable and
// thrown away after, with the image sources attached read-only.
func (b *builder) provisionConfig() machine.Config {
	s := b.opts.Stack
	return machine.Config{
		Name:    "emu-build-" + s.Name,
		Arch:    s.Base.Arch,
		VM:      s.VM,
		Accel:   b.opts.Accel,
		Kernel:  b.kernel,
		Initrd:  b.initrd,
		Cmdline: guest.Cmdline(proto.Provision, s.Base.Arch),
		Drive:   qemu.Drive{Path: b.rawDisk(), Format: "raw", Discard: true, Cache: "unsafe"},
		Extra:   b.imageDrives(),
		Serial:  filepath.Join(b.logs, store.SerialLog),
		Output:  filepath.Join(b.logs, store.QEMULog),
		QEMU:    b.opts.QEMU,
		Log:     b.opts.Log,
	}
}

// request is the provision request this build sends on hello.
func (b *builder) request() proto.Request {
	req := provisionRequest(b.opts.Stack, b.imageIDs)
	req.Optimize = b.bins.items
	req.Images = b.imageRequests()
	// The agent waits for the host's ack of each step's start before it
	// runs the step (machine.Session acks), so that a step that takes the
	// guest down at once is still named.
	req.AckSteps = true
	return req
}

// BakeServices are the services started for the bake: those the base
// provides (unit:), not the stack's own commands (run:), which usually need
// what the bake makes, such as a migrated schema.
func BakeServices(s *spec.Stack) []string {
	var names []string
	for _, name := range s.StartOrder() {
		if s.Services[name].Unit != "" {
			names = append(names, name)
		}
	}
	return names
}

// provisionRequest is the bake as the agent runs it; ids are the image IDs
// of the stack's image references.
func provisionRequest(s *spec.Stack, ids map[string]string) proto.Request {
	req := proto.Request{Op: proto.OpProvision, Slim: s.Slim.Remove, Services: BakeServices(s), Prune: s.UsesContainers()}
	if s.UsesContainers() {
		req.Slim = append(append([]string(nil), s.Slim.Remove...), spec.EngineSlim...)
	}
	for _, st := range s.Bake {
		req.Steps = append(req.Steps, proto.Step{
			Name: st.Name, Run: st.Run, Env: st.Env, User: st.User, Dir: st.Dir, Timeout: st.Timeout.D(),
		})
	}
	req.Steps = containerSteps(s, ids, req.Steps)
	req.Volumes = guest.Volumes(s)
	return req
}
