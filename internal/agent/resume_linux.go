package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SetClock steps the guest's wall clock to t: after a resume it is behind
// by the time the guest was suspended.
func SetClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set the clock: %w", err)
	}
	return nil
}

// AddEntropy mixes b into the kernel's random pool and credits it: a
// resumed guest would otherwise go on from the very pool state every
// other resume of the same snapshot has.
func AddEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed the random pool: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0])))
	if errno != 0 {
		return fmt.Errorf("reseed the random pool: RNDADDENTROPY: %w", errno)
	}
	// The entropy only reaches the kernel's generator at its next reseed,
	// up to a minute away: reseed now (Linux 4.17 and later).
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 {
		return fmt.Errorf("reseed the random pool: RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// rndAddEntropy is RNDADDENTROPY, _IOW('R', 0x03, int[2]); x/sys/unix
// names it only for some architectures.
const rndAddEntropy = 1<<30 | 8<<16 | 'R'<<8 | 0x03

// rndReseedCRNG is RNDRESEEDCRNG, _IO('R', 0x07).
const rndReseedCRNG = 'R'<<8 | 0x07
