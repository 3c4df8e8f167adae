//go:build !linux

package agent

import (
	"context"
	"errors"
	"os"
	"time"
)

// The agent runs in a Linux guest. The host tools import this package for
// its configuration and protocol types, so it builds elsewhere too; these
// are the parts that only a Linux guest can do.
var errNotLinux = errors.New("only in a Linux guest")

// ConfigureNetwork needs Linux's interface ioctls.
func ConfigureNetwork(ctx context.Context, ifname string) error {
	return errNotLinux
}

// PowerOff needs Linux's reboot syscall or systemd.
func PowerOff() error { return errNotLinux }

// openPTY needs Linux's /dev/ptmx.
func openPTY() (tty, pts *os.File, err error) { return nil, nil, errNotLinux }

func setWinsize(tty *os.File, rows, cols uint16) {}

// SetClock needs Linux's clock_settime.
func SetClock(t time.Time) error { return errNotLinux }

// AddEntropy needs Linux's random ioctl.
func AddEntropy(b []byte) error { return errNotLinux }
