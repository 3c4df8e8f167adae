package build

import (
	"github.com/emu-dev/emu/internal/machine"
)

// Error is a failed build: which stage, what went wrong, and which logs to
// read. A failure in the guest (a bake step, a service, a crash) is a
// *machine.GuestError in Err, which names the step or service and holds
// what it printed last.
type Error struct {
	Stage string
	Err   error
	// Logs are the build's own logs, after the guest's.
	Logs []string
	// Kept is the work directory kept by --keep-on-failure.
	Kept string
	Hint string
}

func (e *Error) Error() string { return "build: " + e.Stage + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// Guest is the guest failure behind the build's, or nil.
func (e *Error) Guest() *machine.GuestError { return machine.AsGuestError(e.Err) }

// Step names the bake step or service that failed, "" when none did.
func (e *Error) Step() string {
	ge := e.Guest()
	switch {
	case ge == nil:
		return ""
	case ge.Step != "":
		return ge.Step
	case ge.Service != "":
		return "service " + ge.Service
	}
	return ""
}

// Detail is the multi-line part a person reads below the error line.
func (e *Error) Detail() string {
	extra := ""
	if e.Kept != "" {
		extra = "kept for inspection (--keep-on-failure): " + e.Kept + "\n"
	}
	return machine.DetailWith(e.Guest(), e.Logs, extra)
}

// HintText is the build's own hint, when it has one; the CLI otherwise
// shows the hint of the error behind it (the guest's, a tool's).
func (e *Error) HintText() string { return e.Hint }
