package instance

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// waitExit waits up to d for pid (not our child) to exit, on a kqueue
// (EVFILT_PROC, NOTE_EXIT): the kernel says when, with no polling.
func waitExit(ctx context.Context, pid int, d time.Duration) bool {
	kq, err := unix.Kqueue()
	if err != nil {
		return false
	}
	defer unix.Close(kq)
	var ev unix.Kevent_t
	unix.SetKevent(&ev, pid, unix.EVFILT_PROC, unix.EV_ADD|unix.EV_ONESHOT)
	ev.Fflags = unix.NOTE_EXIT
	if _, err := unix.Kevent(kq, []unix.Kevent_t{ev}, nil, nil); err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	deadline := time.Now().Add(d)
	out := make([]unix.Kevent_t, 1)
	for {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return false
		}
		// Wake at least every second to notice ctx.
		ts := unix.NsecToTimespec(int64(min(left, time.Second)))
		n, err := unix.Kevent(kq, nil, out, &ts)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return false
		}
		if n > 0 {
			return true
		}
	}
}
