package spec

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Size is a byte count written as "2GiB", "512MiB", "8G" or a plain number.
type Size int64

// Common sizes.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
)

var sizeUnits = []struct {
	suffix string
	mult   Size
}{
	{"KiB", KiB}, {"MiB", MiB}, {"GiB", GiB}, {"TiB", 1 << 40},
	{"K", KiB}, {"M", MiB}, {"G", GiB}, {"T", 1 << 40},
	{"B", 1},
}

// ParseSize parses a size such as "2GiB"; the short forms K, M, G and T are
// binary units too, as QEMU reads them.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("invalid size %q: want a whole number with an optional unit (KiB, MiB, GiB)", s)
			}
			return Size(n) * u.mult, nil
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number with an optional unit (KiB, MiB, GiB)", s)
	}
	return Size(n), nil
}

// String renders s in the largest binary unit that divides it.
func (s Size) String() string {
	switch {
	case s != 0 && s%GiB == 0:
		return fmt.Sprintf("%dGiB", s/GiB)
	case s != 0 && s%MiB == 0:
		return fmt.Sprintf("%dMiB", s/MiB)
	case s != 0 && s%KiB == 0:
		return fmt.Sprintf("%dKiB", s/KiB)
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML reads a size from a string or an integer.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErrorf(n, "want a size such as 2GiB")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return typeErrorf(n, "%v", err)
	}
	*s = v
	return nil
}

// MarshalText renders the size as UnmarshalYAML reads it.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Duration is a time.Duration written as "90s" or "5m".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErrorf(n, "want a duration such as 90s or 5m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return typeErrorf(n, "invalid duration %q: want a positive duration such as 90s or 5m", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalText renders the duration as UnmarshalYAML reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// FileMode is a permission mode written in octal ("0755"); 0 means unset.
type FileMode uint32

// UnmarshalYAML reads an octal mode.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErrorf(n, "want an octal mode such as \"0755\"")
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(n.Value, "0o"), 8, 32)
	if err != nil || v > 0o7777 {
		return typeErrorf(n, "invalid mode %q: want an octal mode such as \"0755\"", n.Value)
	}
	*m = FileMode(v)
	return nil
}

// MarshalText renders the mode in octal.
func (m FileMode) MarshalText() ([]byte, error) { return []byte(fmt.Sprintf("%04o", uint32(m))), nil }

// typeErrorf returns a *yaml.TypeError, which the decoder collects and goes
// on, so that one bad value does not hide the problems after it.
func typeErrorf(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
}

// UnmarshalText reads what MarshalText writes (JSON manifests).
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// UnmarshalText reads what MarshalText writes (JSON manifests).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalText reads what MarshalText writes (JSON manifests).
func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil {
		return fmt.Errorf("invalid mode %q: %w", b, err)
	}
	*m = FileMode(v)
	return nil
}
