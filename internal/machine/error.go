package machine

import (
	"errors"
	"fmt"
	"strings"
)

// GuestError is a guest that did not do what it was booted for: a bake
// step or a service that failed, or a guest that died, hung or was
// interrupted. Provisioning, the boot check and emu up all report this one
// type; the build wraps it in its own error, which adds the stage.
type GuestError struct {
	// Op is the session's verb ("verify", "up"); "" inside a build, whose
	// error names the stage instead.
	Op string
	// Step is the bake step, or the agent's stage, that failed or was
	// running; Service the service. At most one is set.
	Step    string
	Service string
	// Code is a failed step's exit code.
	Code *int
	Err  error
	// Tail is what to read first: the step's output, the service's journal
	// or the serial console's last lines; TailFrom says which.
	Tail     []string
	TailFrom string
	Logs     []string
	// Crash is the guest kernel's crash line, when the console has one.
	Crash string
	Hint  string
	// hello: the agent had said hello (the boot got that far).
	hello bool
}

func (e *GuestError) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op + ": ")
	}
	switch {
	case e.Step != "":
		b.WriteString(e.Step + ": ")
	case e.Service != "":
		b.WriteString("service " + e.Service + ": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *GuestError) Unwrap() error { return e.Err }

// Detail is the multi-line part a person reads below the error line: the
// tail, then the logs.
func (e *GuestError) Detail() string {
	var b strings.Builder
	writeTail(&b, e.Tail, e.TailFrom)
	writeLogs(&b, e.Logs)
	return b.String()
}

// HintText is what to do next, when known.
func (e *GuestError) HintText() string { return e.Hint }

func writeTail(b *strings.Builder, tail []string, from string) {
	if len(tail) == 0 {
		return
	}
	fmt.Fprintf(b, "last %d lines of %s:\n", len(tail), from)
	for _, l := range tail {
		fmt.Fprintf(b, "  | %s\n", l)
	}
}

func writeLogs(b *strings.Builder, logs []string) {
	if len(logs) == 0 {
		return
	}
	b.WriteString("logs:\n")
	for _, l := range logs {
		fmt.Fprintf(b, "  %s\n", l)
	}
}

// DetailWith renders a guest failure's tail and logs with extra log paths
// and trailing lines, for a caller that adds its own (the build's kept
// work directory).
func DetailWith(ge *GuestError, logs []string, extra string) string {
	var b strings.Builder
	if ge != nil {
		writeTail(&b, ge.Tail, ge.TailFrom)
		logs = append(append([]string(nil), ge.Logs...), logs...)
	}
	writeLogs(&b, logs)
	b.WriteString(extra)
	return b.String()
}

// AsGuestError returns the guest failure in err's chain, or nil.
func AsGuestError(err error) *GuestError {
	var ge *GuestError
	if errors.As(err, &ge) {
		return ge
	}
	return nil
}

// earlyCrash is the kernel's crash line when err is a guest whose kernel
// crashed before the agent said hello, else "".
func earlyCrash(err error) string {
	if ge := AsGuestError(err); ge != nil && !ge.hello {
		return ge.Crash
	}
	return ""
}
