package instance

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// startTime is when pid started, in clock ticks since boot (field 22 of
// /proc/PID/stat); errExited for a zombie.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Field 22, counted after the command in parentheses (which may hold spaces).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	// A zombie (killed, not yet reaped by its parent) is not running.
	if f[0] == "Z" || f[0] == "X" {
		return 0, errExited
	}
	return strconv.ParseUint(f[19], 10, 64)
}
