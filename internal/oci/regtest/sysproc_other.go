//go:build !linux

package regtest

import "syscall"

// sysProcAttr: only Linux can tie the registry's life to the test's; the
// cleanup stops it elsewhere.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
