package ports

// FindHolder returns the process listening on the TCP port on an address
// that conflicts with 127.0.0.1 (127.0.0.1, 0.0.0.0, :: or ::1), from /proc.
// Another user's process is found only as root.
func FindHolder(port int) (*Holder, error) { return findHolder("/proc", port) }
