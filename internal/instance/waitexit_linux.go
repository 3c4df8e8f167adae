package instance

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// waitExit waits up to d for pid (not our child) to exit, on a pidfd: the
// kernel says when, with no polling.
func waitExit(ctx context.Context, pid int, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return false
		}
		// Wake at least every second to notice ctx.
		ms := int(min(left, time.Second) / time.Millisecond)
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, max(ms, 1))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return false
		}
		if n > 0 {
			return true
		}
	}
}
