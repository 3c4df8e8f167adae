//go:build !linux

package doctor

// privilege: builds, and so newuidmap, are Linux only.
func privilege(string) (string, error) { return "", nil }
