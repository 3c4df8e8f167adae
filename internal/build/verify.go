package build

import (
	"context"
	"path/filepath"
	"strconv"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/machine"
)

// verify boots the staged bundle as `emu verify` would, so no bundle is
// placed whose services do not all come up.
func (b *builder) verify(ctx context.Context) (stageResult, error) {
	if b.opts.SkipVerify {
		b.emit(event.New(event.Log, "verify", "skipped (--skip-verify)"))
		return stageResult{Facts: map[string]string{"skipped": "true"}}, nil
	}
	if _, err := b.assemble(); err != nil {
		return stageResult{}, err
	}
	b.seedDiskCache()
	t, err := machine.Verify(ctx, machine.VerifyOptions{
		Bundle:    b.staged,
		DiskCache: b.opts.Home.DiskCache(),
		Accel:     b.opts.Accel,
		WorkDir:   b.work,
		LogDir:    filepath.Join(b.logs, "verify"),
		Sink:      event.SinkFunc(b.emitGuest),
		Log:       b.opts.Log,
		QEMU:      b.opts.QEMU,
		Name:      "emu-verify-" + b.opts.Stack.Name,
	})
	if ge := machine.AsGuestError(err); ge != nil {
		ge.Op = ""
		return stageResult{}, &Error{Stage: "verify", Err: ge, Hint: "the image's services did not all come up; the previous bundle is untouched"}
	}
	if err != nil {
		return stageResult{}, err
	}
	return stageResult{Facts: map[string]string{
		"boot_ms":     strconv.FormatInt(t.Hello.Milliseconds(), 10),
		"services_ms": strconv.FormatInt(t.Services.Milliseconds(), 10),
	}}, nil
}

// emitGuest passes on a boot check's events, except its own verdict: the
// build's done or failed ends the build's stream.
func (b *builder) emitGuest(e event.Event) {
	if e.Kind.Terminal() {
		b.record(e)
		return
	}
	b.emit(e)
}
