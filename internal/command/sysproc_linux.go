package command

import "syscall"

// SysProcAttr returns the process attributes of a child emu starts. It runs
// in its own process group, or with session its own session, so one signal
// reaches everything it starts. Unless detach, the kernel kills it when emu
// dies (Pdeathsig), even by SIGKILL.
func SysProcAttr(session, detach bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: !session, Setsid: session}
	if !detach {
		a.Pdeathsig = syscall.SIGKILL
	}
	return a
}
