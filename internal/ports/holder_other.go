//go:build !linux

package ports

import (
	"fmt"
	"runtime"
)

// FindHolder returns the process listening on the TCP port; it is
// implemented on Linux only.
func FindHolder(port int) (*Holder, error) {
	return nil, fmt.Errorf("find the holder of port %d: not supported on %s", port, runtime.GOOS)
}
