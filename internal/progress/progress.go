// Package progress turns events into what the user sees: a live block on a
// terminal, one plain line per event in CI, or the events themselves as JSON
// lines. Every view reads event.Fold's Status; nothing else is tracked.
package progress

import (
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/emu-dev/emu/internal/event"
)

// Mode is how progress is shown.
type Mode string

const (
	// Live redraws a compact block on a terminal.
	Live Mode = "live"
	// Plain prints one line per event, for CI logs and pipes.
	Plain Mode = "plain"
	// JSON writes the events as JSON lines (--json).
	JSON Mode = "json"
)

// Detect picks the mode for w: JSON when asked for, Live when w is a
// terminal that is not "dumb" outside CI (getenv reads TERM and CI),
// Plain otherwise.
func Detect(w io.Writer, jsonFlag bool, getenv func(string) string) Mode {
	f, ok := w.(interface{ Fd() uintptr })
	isTerm := ok && term.IsTerminal(int(f.Fd()))
	return detect(jsonFlag, isTerm, getenv)
}

func detect(jsonFlag, isTerm bool, getenv func(string) string) Mode {
	switch {
	case jsonFlag:
		return JSON
	case isTerm && getenv("TERM") != "dumb" && getenv("CI") == "":
		return Live
	}
	return Plain
}

// DefaultTick is how often the live block is redrawn while nothing happens.
const DefaultTick = 100 * time.Millisecond

type config struct {
	now     func() time.Time
	tick    time.Duration
	verbose *bool
	stages  []string
	width   func() int
}

// Option configures a Renderer.
type Option func(*config)

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option {
	return func(c *config) { c.now = now }
}

// WithTick sets the live redraw interval; 0 disables the ticker, and the
// block is then redrawn on events only.
func WithTick(d time.Duration) Option {
	return func(c *config) { c.tick = d }
}

// Verbose sets whether every step output line is printed. Plain prints them
// by default; Live by default shows only the running step's last line, and
// when verbose prints each line above the block.
func Verbose(on bool) Option {
	return func(c *config) { c.verbose = &on }
}

// WithStages names the stages planned, so that the live block can show the
// ones not started yet as pending.
func WithStages(names ...string) Option {
	return func(c *config) { c.stages = append([]string(nil), names...) }
}

// WithWidth sets how the live block learns the terminal width, to cut lines
// that would wrap; by default it asks the terminal when w is one.
func WithWidth(width func() int) Option {
	return func(c *config) { c.width = width }
}

// Renderer shows events as they come. It is an event.Sink; Emit is safe for
// concurrent use.
type Renderer struct {
	w       io.Writer
	mode    Mode
	cfg     config
	verbose bool
	enc     *event.Encoder

	mu     sync.Mutex
	status event.Status
	drawn  int // lines of the live block on screen
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

var _ event.Sink = (*Renderer)(nil)

// New returns a renderer writing to w in the given mode. In Live mode it
// starts a ticker; call Close to stop it and print the final state.
func New(w io.Writer, mode Mode, opts ...Option) *Renderer {
	cfg := config{now: time.Now, tick: DefaultTick}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.width == nil {
		cfg.width = termWidth(w)
	}
	r := &Renderer{w: w, mode: mode, cfg: cfg, verbose: mode == Plain}
	if cfg.verbose != nil {
		r.verbose = *cfg.verbose
	}
	switch mode {
	case JSON:
		r.enc = event.NewEncoder(w)
	case Live:
		if cfg.tick > 0 {
			r.stop = make(chan struct{})
			r.wg.Add(1)
			go r.tick()
		}
	}
	return r
}

func termWidth(w io.Writer) func() int {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() int { return 0 }
	}
	return func() int {
		width, _, err := term.GetSize(int(f.Fd()))
		if err != nil {
			return 0
		}
		return width
	}
}

// Emit folds e into the status and shows it.
func (r *Renderer) Emit(e event.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = event.Fold(r.status, e)
	switch r.mode {
	case JSON:
		// Nothing else may reach w: a write error is the reader's to notice.
		_ = r.enc.Encode(e)
	case Plain:
		r.write(r.plainLines(e))
	case Live:
		r.liveEvent(e)
	}
}

// Status returns what the events so far amount to.
func (r *Renderer) Status() event.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Stages = append([]event.Item(nil), s.Stages...)
	s.Steps = append([]event.Item(nil), s.Steps...)
	s.Services = append([]event.Item(nil), s.Services...)
	return s
}

// Close stops the ticker and draws the final state. It is safe to call more
// than once.
func (r *Renderer) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.mu.Unlock()
	if r.stop != nil {
		close(r.stop)
		r.wg.Wait()
	}
	if r.mode == Live {
		r.mu.Lock()
		r.redraw(nil)
		r.mu.Unlock()
	}
}

func (r *Renderer) tick() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.tick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.render()
		}
	}
}

// write prints lines; a write error has nowhere better to go than away.
func (r *Renderer) write(lines []string) {
	if len(lines) == 0 {
		return
	}
	n := 0
	for _, l := range lines {
		n += len(l) + 1
	}
	b := make([]byte, 0, n)
	for _, l := range lines {
		b = append(b, l...)
		b = append(b, '\n')
	}
	_, _ = r.w.Write(b)
}
