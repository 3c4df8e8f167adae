package progress

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// ProvisionStage is the stage under which bake steps are drawn.
const ProvisionStage = "provision"

// Humanize renders a byte count with decimal units: "512 B", "348.2 MB".
func Humanize(bytes int64) string {
	if bytes < 0 {
		return "-" + Humanize(-bytes)
	}
	if bytes < 1000 {
		return strconv.FormatInt(bytes, 10) + " B"
	}
	v := float64(bytes)
	for _, unit := range []string{"kB", "MB", "GB", "TB", "PB"} {
		v /= 1000
		// Round first so that 999.96 kB reads as "1.0 MB", not "1000.0 kB".
		if math.Round(v*10)/10 < 1000 || unit == "PB" {
			return fmt.Sprintf("%.1f %s", v, unit)
		}
	}
	panic("unreachable")
}

// Dur renders a duration compactly: "0.4s", "12.3s", "1m05s", "2h03m10s".
func Dur(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	tenths := d.Round(100 * time.Millisecond)
	if tenths < time.Minute {
		return fmt.Sprintf("%.1fs", tenths.Seconds())
	}
	d = d.Round(time.Second)
	h, m, s := int(d/time.Hour), int(d%time.Hour/time.Minute), int(d%time.Minute/time.Second)
	if h > 0 {
		return fmt.Sprintf("%dh%02dm%02ds", h, m, s)
	}
	return fmt.Sprintf("%dm%02ds", m, s)
}

// facts renders the stage fields worth a glance: "cached", the output size.
func facts(fields map[string]string) string {
	var parts []string
	if fields[proto.FieldCached] == "true" {
		parts = append(parts, "cached")
	}
	if v, ok := fields[proto.FieldSize]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			parts = append(parts, Humanize(n))
		} else {
			parts = append(parts, v)
		}
	}
	return strings.Join(parts, ", ")
}

// transferFacts renders a transfer's stage (one whose fields count bytes,
// event.FieldDone): while it runs, "45.1 MB / 120.0 MB, 30.1 MB/s, 2.5s
// left"; once done, "94.1 MB, 30.3 MB/s". ok is false for other stages.
func transferFacts(it event.Item, now time.Time) (s string, ok bool) {
	num := func(k string) (int64, bool) {
		n, err := strconv.ParseInt(it.Fields[k], 10, 64)
		return n, err == nil
	}
	done, hasDone := num(event.FieldDone)
	total, hasTotal := num(event.FieldTotal)
	el := it.Elapsed(now)
	rate := func(n int64) string {
		if el < 50*time.Millisecond || n <= 0 {
			return ""
		}
		return ", " + Humanize(int64(float64(n)/el.Seconds())) + "/s"
	}
	switch {
	case it.State == event.Running && hasDone && hasTotal:
		s = Humanize(done) + " / " + Humanize(total) + rate(done)
		if el >= 50*time.Millisecond && done > 0 && total > done {
			left := time.Duration(float64(el) * float64(total-done) / float64(done))
			s += ", " + Dur(left) + " left"
		}
		return s, true
	case it.State == event.Succeeded && hasDone:
		size, ok := num(proto.FieldSize)
		if !ok {
			size = done
		}
		return Humanize(size) + rate(done), true
	}
	return "", false
}

// Symbols for an item's state.
const (
	symDone    = "✓"
	symFailed  = "✗"
	symRunning = "▸"
	symPending = "·"
)

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// symbol returns the mark for st; spin is the running mark ("" for ▸).
func symbol(st event.State, spin string) string {
	switch st {
	case event.Succeeded, event.Healthy:
		return symDone
	case event.Failing, event.Unhealthy:
		return symFailed
	case event.Running, event.Starting:
		if spin != "" {
			return spin
		}
		return symRunning
	}
	return symPending
}

// view is what the block and the summary draw: the stages with the bake
// steps under the provision stage, then the services.
type view struct {
	s       event.Status
	now     time.Time
	spin    string
	pending []string // planned stages not started yet
	// lastOutput draws the last output line under a running step.
	lastOutput bool
}

func (v view) lines() []string {
	width := 0
	for _, it := range v.s.Stages {
		width = max(width, utf8.RuneCountInString(it.Name))
	}
	for _, n := range v.pending {
		width = max(width, utf8.RuneCountInString(n))
	}
	stepWidth := 0
	for _, it := range v.s.Steps {
		stepWidth = max(stepWidth, utf8.RuneCountInString(it.Name))
	}

	var out []string
	stepsDrawn := false
	for _, it := range v.s.Stages {
		extra := facts(it.Fields)
		if tf, ok := transferFacts(it, v.now); ok {
			extra = tf
		}
		out = append(out, v.itemLine("  ", it, width, extra))
		if it.Name == ProvisionStage {
			out = append(out, v.stepLines(stepWidth)...)
			stepsDrawn = true
		}
	}
	for _, n := range v.pending {
		out = append(out, fmt.Sprintf("  %s %s", symPending, n))
	}
	if !stepsDrawn {
		out = append(out, v.stepLines(stepWidth)...)
	}
	if len(v.s.Services) > 0 {
		svcWidth := 0
		for _, it := range v.s.Services {
			svcWidth = max(svcWidth, utf8.RuneCountInString(it.Name))
		}
		out = append(out, "  services")
		for _, it := range v.s.Services {
			out = append(out, v.serviceLine(it, svcWidth))
		}
	}
	return out
}

func (v view) stepLines(width int) []string {
	var out []string
	for _, it := range v.s.Steps {
		out = append(out, v.itemLine("      ", it, width, exit(it)))
		if v.lastOutput && it.State == event.Running && len(it.Tail) > 0 {
			out = append(out, "          │ "+clean(it.Tail[len(it.Tail)-1]))
		}
	}
	return out
}

func exit(it event.Item) string {
	if it.State == event.Failing && it.Code != nil {
		return fmt.Sprintf("exit %d", *it.Code)
	}
	return ""
}

// itemLine draws "  ✓ rootfs      12.3s  (cached)".
func (v view) itemLine(indent string, it event.Item, width int, extra string) string {
	line := fmt.Sprintf("%s%s %s %7s", indent, symbol(it.State, v.spin), pad(it.Name, width), v.elapsed(it))
	if extra != "" {
		line += "  (" + extra + ")"
	}
	if it.State == event.Failing && it.Msg != "" {
		line += "  " + clean(it.Msg)
	}
	return strings.TrimRight(line, " ")
}

func (v view) serviceLine(it event.Item, width int) string {
	line := fmt.Sprintf("    %s %s %-9s", symbol(it.State, v.spin), pad(it.Name, width), it.State)
	if it.Msg != "" {
		line += " " + clean(it.Msg)
	}
	return strings.TrimRight(line, " ")
}

func (v view) elapsed(it event.Item) string {
	if it.Start.IsZero() {
		return ""
	}
	return Dur(it.Elapsed(v.now))
}

func pad(s string, width int) string {
	if n := utf8.RuneCountInString(s); n < width {
		return s + strings.Repeat(" ", width-n)
	}
	return s
}

// Summary renders a finished run for the end of `emu build`: the outcome and
// total time, then each stage with its duration, cache hit and size.
func Summary(s event.Status) string {
	var b strings.Builder
	total := Dur(s.Last.Sub(s.Start))
	switch {
	case s.Failed:
		fmt.Fprintf(&b, "failed after %s", total)
		if s.FailedName != "" {
			fmt.Fprintf(&b, " in %s", s.FailedName)
		}
		if s.Err != "" {
			fmt.Fprintf(&b, ": %s", clean(s.Err))
		}
	case s.Done:
		fmt.Fprintf(&b, "done in %s", total)
	default:
		fmt.Fprintf(&b, "stopped after %s", total)
	}
	b.WriteString("\n")
	for _, l := range (view{s: s, now: s.Last}).lines() {
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}

// clean makes a line of program output safe to draw: what a carriage return
// would overwrite goes, and so do escape sequences and control characters.
func clean(s string) string {
	s = strings.TrimRight(s, "\r\n")
	if i := strings.LastIndexByte(s, '\r'); i >= 0 {
		s = s[i+1:]
	}
	if !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\x1b':
			i = skipEscape(s, i)
		case c == '\t':
			b.WriteString("    ")
		case c < ' ' || c == 0x7f:
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// skipEscape returns the index of the last byte of the escape sequence
// starting at s[i] == ESC.
func skipEscape(s string, i int) int {
	if i+1 >= len(s) || s[i+1] != '[' {
		return i + 1
	}
	for j := i + 2; j < len(s); j++ {
		if s[j] >= 0x40 && s[j] <= 0x7e {
			return j
		}
	}
	return len(s) - 1
}

// truncate cuts s to width runes; width <= 0 means no limit.
func truncate(s string, width int) string {
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width-1]) + "…"
}
