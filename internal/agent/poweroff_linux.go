package agent

import (
	"context"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// PowerOff ends the guest: through systemd when it is PID 1, so every unit
// stops and the filesystems unmount cleanly; else with the reboot syscall.
func PowerOff() error {
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		return run(context.Background(), "systemctl", "poweroff", "--no-block")
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return errors.Join(errors.New("reboot(POWER_OFF)"), err)
	}
	return nil
}
