package cli

import (
	"fmt"
	"time"

	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/store"
)

// pruneDisks removes the unpacked disks no image or instance uses any more
// (each build seeds one, and a rebuild leaves the last one unused). It is
// housekeeping: a failure is logged, never the command's error. quiet
// keeps stderr clean (--json).
func (e *env) pruneDisks(home store.Home, quiet bool) {
	p, err := instance.PruneDisks(home, instance.PruneGrace, time.Now())
	if err != nil {
		e.log.Debug("prune unpacked disks", "err", err)
		return
	}
	if len(p.Disks) > 0 && !quiet {
		fmt.Fprintf(e.stderr, "freed %s: %d unpacked disk(s) no image or instance uses\n", progress.Humanize(p.Bytes), len(p.Disks))
	}
}
