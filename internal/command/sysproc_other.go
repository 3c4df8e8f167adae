//go:build !linux

package command

import "syscall"

// SysProcAttr returns the process attributes of a child emu starts: its own
// process group, or with session its own session. Only Linux can also have
// the kernel kill a child when emu dies; elsewhere a context's cancel (and
// the signal handling of the CLI) end children, so a SIGKILL'ed emu leaves
// them running. detach changes nothing here.
func SysProcAttr(session, detach bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: !session, Setsid: session}
}
