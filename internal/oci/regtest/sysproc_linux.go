package regtest

import "syscall"

// sysProcAttr has the kernel kill the registry should the test binary die
// without running its cleanups.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
