package cli

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/machine"
)

// The hint printed is the first one in the error's chain: the build's
// own, else the guest's, else that of the error behind it.
func TestHintOf(t *testing.T) {
	old := fmt.Errorf("make ext4 disk x: %w", &disk.Mke2fsError{Version: "1.47.0", Src: "root.tar"})
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"own", &build.Error{Stage: "disk", Err: old, Hint: "mine"}, "mine"},
		{"guest", &build.Error{Stage: "provision", Err: &machine.GuestError{Hint: "read the step's log"}}, "read the step's log"},
		{"behind", &build.Error{Stage: "disk", Err: old}, "install e2fsprogs 1.47.1 or newer"},
		{"joined", errors.Join(errors.New("plain"), fmt.Errorf("wrapped: %w", withHint{errors.New("x"), "the second"})), "the second"},
		{"none", &build.Error{Stage: "disk", Err: fmt.Errorf("plain")}, ""},
	} {
		got := hintOf(tc.err)
		if !strings.Contains(got, tc.want) || (tc.want == "" && got != "") {
			t.Errorf("%s: hint %q, want %q", tc.name, got, tc.want)
		}
		var errb bytes.Buffer
		(&env{stderr: &errb}).render(tc.err)
		if n := strings.Count(errb.String(), "hint: "); tc.want != "" && (n != 1 || !strings.Contains(errb.String(), "hint: "+got)) {
			t.Errorf("%s: rendered %q", tc.name, errb.String())
		}
	}
}
