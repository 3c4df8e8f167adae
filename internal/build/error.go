package build

import (
	"fmt"
	"strings"
)

// Error is a failed build: which stage, which bake step, what it printed
// last, and which logs to read.
type Error struct {
	Stage string
	// Step is the bake step (or service) that failed, if one did.
	Step string
	Code *int
	Err  error
	// Tail is the last output of the failing step or the console.
	Tail     []string
	TailFrom string // "step output" or "serial console"
	Logs     []string
	// Kept is the work directory kept by --keep-on-failure.
	Kept string
	Hint string
	// crash is the guest kernel's crash line, when the console has one.
	crash string
}

func (e *Error) Error() string {
	s := "build: " + e.Stage
	if e.Step != "" {
		s += ": " + e.Step
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Detail is the multi-line part a person reads below the error line.
func (e *Error) Detail() string {
	var b strings.Builder
	if len(e.Tail) > 0 {
		fmt.Fprintf(&b, "last %d lines of %s:\n", len(e.Tail), e.TailFrom)
		for _, l := range e.Tail {
			fmt.Fprintf(&b, "  | %s\n", l)
		}
	}
	if len(e.Logs) > 0 {
		fmt.Fprintf(&b, "logs:\n")
		for _, l := range e.Logs {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	if e.Kept != "" {
		fmt.Fprintf(&b, "kept for inspection (--keep-on-failure): %s\n", e.Kept)
	}
	return b.String()
}

// HintText is what to do next, when known.
func (e *Error) HintText() string { return e.Hint }
