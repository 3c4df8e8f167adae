package doctor

import (
	"fmt"
	"os"
	"syscall"
)

// privilege says how the program at path may act as root: "setuid root",
// "file capabilities" or "" for neither.
func privilege(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode()&os.ModeSetuid != 0 && st.Uid == 0 {
		return "setuid root", nil
	}
	// Some distributions give newuidmap file capabilities (cap_setuid)
	// instead of the setuid bit.
	if n, err := syscall.Getxattr(path, "security.capability", nil); err == nil && n > 0 {
		return "file capabilities", nil
	}
	return "", nil
}
