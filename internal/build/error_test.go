package build

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/machine"
)

// The hint the CLI prints comes from the build, else the guest, else the
// error behind it.
func TestErrorHint(t *testing.T) {
	old := fmt.Errorf("make ext4 disk x: %w", &disk.Mke2fsError{Version: "1.47.0", Src: "root.tar"})
	for _, tc := range []struct {
		name string
		err  *Error
		want string
	}{
		{"own", &Error{Stage: "disk", Err: old, Hint: "mine"}, "mine"},
		{"guest", &Error{Stage: "provision", Err: &machine.GuestError{Hint: "read the step's log"}}, "read the step's log"},
		{"behind", &Error{Stage: "disk", Err: old}, "install e2fsprogs 1.47.1 or newer"},
		{"none", &Error{Stage: "disk", Err: fmt.Errorf("plain")}, ""},
	} {
		if got := tc.err.HintText(); !strings.Contains(got, tc.want) || (tc.want == "" && got != "") {
			t.Errorf("%s: HintText = %q, want %q", tc.name, got, tc.want)
		}
	}
}
