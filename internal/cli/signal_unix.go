package cli

import (
	"os/exec"
	"syscall"
)

// signalOf is the signal that ended a command, 0 when none did.
func signalOf(ee *exec.ExitError) int {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int(ws.Signal())
	}
	return 0
}
