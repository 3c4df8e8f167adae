package machine

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/emu-dev/emu/internal/command"
)

// crashLine matches the line a guest kernel prints first when it dies: a
// panic, an oops, or a BUG() assertion. The first one in the log is the
// cause; what follows it is usually a consequence ("Attempted to kill init").
// The message starts the line, after the timestamp, so a service that prints
// "Oops: " through the agent's console lines is not taken for the kernel.
var crashLine = regexp.MustCompile(`(?m)^(?:\[\s*\d+\.\d+\]\s*)?(Kernel panic - not syncing:.*|Oops: .*|kernel BUG at .*)$`)

// KernelCrash returns how the guest kernel crashed, as its console log tells
// it ("Kernel panic - not syncing: ...", "Oops: ..."), or "" when the log
// shows no crash. The timestamp and anything before the message are dropped.
func KernelCrash(log string) string {
	m := crashLine.FindStringSubmatch(log)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(strings.TrimRight(m[1], "\r"))
}

// Console is what a serial console log says about a failure: its last
// lines, and the kernel's own crash message when it has one.
type Console struct {
	Tail  []string
	Crash string
}

// ReadConsole reads the console log at path, keeping its last n lines.
func ReadConsole(path string, n int) (Console, error) {
	out, err := os.ReadFile(path)
	if err != nil {
		return Console{}, err
	}
	s := string(out)
	return Console{Tail: command.LastLines(s, n), Crash: KernelCrash(s)}, nil
}

// Explain adds the kernel's crash message to err, which says what emu saw
// (QEMU exited, no answer in time): the crash is usually why.
func (c Console) Explain(err error) error {
	if c.Crash == "" {
		return err
	}
	return fmt.Errorf("%w: the guest kernel crashed: %s", err, c.Crash)
}

// BootAgain is what emu says when it boots a guest once more because its
// kernel crashed (crash) before the agent started.
func BootAgain(crash string) string {
	return "the guest kernel crashed before the agent started (" + crash + "); booting it again"
}
