package progress

import (
	"slices"
	"strings"

	"github.com/emu-dev/emu/internal/event"
)

// failureTail is how many output lines of a failed step Live prints.
const failureTail = 20

const (
	cursorUp  = "\x1b[1A"
	clearLine = "\x1b[2K"
)

// liveEvent shows e, already folded into the status: lines worth keeping go
// above the block for good, then the block is redrawn. A lone output line
// waits for the ticker: a chatty step must not cost a frame per line.
func (r *Renderer) liveEvent(e event.Event) {
	above := r.permanent(e)
	if r.closed {
		r.write(above)
		return
	}
	if len(above) == 0 && e.Kind == event.StepOutput && r.cfg.tick > 0 {
		return
	}
	r.redraw(above)
}

// permanent returns the lines Live prints above the block for e.
func (r *Renderer) permanent(e event.Event) []string {
	switch e.Kind {
	case event.Log:
		return []string{r.describe(e)}
	case event.StepOutput:
		if r.verbose {
			return []string{r.describe(e)}
		}
	case event.StageFailed, event.ServiceUnhealthy, event.Failed:
		return []string{symFailed + " " + r.describe(e)}
	case event.StepFailed:
		lines := []string{symFailed + " " + r.describe(e)}
		if it, ok := find(r.status.Steps, e.Name); ok && !r.verbose {
			tail := it.Tail[max(0, len(it.Tail)-failureTail):]
			for _, l := range tail {
				lines = append(lines, "  │ "+clean(l))
			}
		}
		return lines
	}
	return nil
}

// render redraws the block; the ticker calls it, and tests do.
func (r *Renderer) render() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mode == Live && !r.closed {
		r.redraw(nil)
	}
}

// redraw erases the block, prints above, and draws the block anew, in one
// write so that a terminal never shows half a frame. r.mu must be held.
func (r *Renderer) redraw(above []string) {
	frame := r.frame()
	width := r.cfg.width()
	var b strings.Builder
	for range r.drawn {
		b.WriteString(cursorUp + clearLine)
	}
	for _, l := range above {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for _, l := range frame {
		b.WriteString(truncate(l, width))
		b.WriteByte('\n')
	}
	r.drawn = len(frame)
	if b.Len() > 0 {
		_, _ = r.w.Write([]byte(b.String()))
	}
}

// frame is the block for the current status. r.mu must be held.
func (r *Renderer) frame() []string {
	now := r.cfg.now()
	v := view{s: r.status, now: now, lastOutput: true}
	if !r.closed {
		i := now.UnixMilli() / 100 % int64(len(spinner))
		if i < 0 {
			i += int64(len(spinner))
		}
		v.spin = spinner[i]
	}
	for _, n := range r.cfg.stages {
		if !slices.ContainsFunc(r.status.Stages, func(it event.Item) bool { return it.Name == n }) {
			v.pending = append(v.pending, n)
		}
	}
	return v.lines()
}
