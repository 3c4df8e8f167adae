package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

func runLogs(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "logs", "[SERVICE] [-f] [--file FILE | --name NAME]")
	file := fs.String("file", spec.DefaultFile, "the stack `file`")
	name := fs.String("name", "", "the instance `name` (default: the stack file's)")
	follow := fs.Bool("f", false, "follow the console log, or SERVICE's journal, as it grows (until Ctrl-C or the instance stops)")
	lines := fs.Int("n", 200, "how many journal `lines` of a service")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{fmt.Errorf("logs takes at most one service, got %d", len(pos))}
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	var inst store.Instance
	if *name != "" {
		inst = home.Instance(*name)
	} else {
		t, err := resolve(ctx, home, *file, flagSet(fs, "file"), nil)
		if err != nil {
			return err
		}
		inst = home.Instance(t.name)
	}
	if len(pos) == 1 {
		if _, err := instance.RunningPID(inst); err != nil {
			return withHint{err: fmt.Errorf("%s is not running: a service's journal is read through its agent", inst.Name), hint: "emu up, or emu logs without a service for the console log"}
		}
		return printJournal(ctx, e.stdout, inst, pos[0], *lines, *follow)
	}
	return catConsole(ctx, e.stdout, inst, *follow)
}

// journalPoll is how often logs -f SERVICE asks the agent for new lines.
const journalPoll = time.Second

// printJournal prints a service's last lines of journal and, with follow,
// what the service logs after them, until ctx ends or the instance stops.
// Each round asks the agent for the lines after the journal cursor the last
// answer ended with, and lets go of the agent's channel in between, so
// status and down are never kept waiting.
func printJournal(ctx context.Context, w io.Writer, inst store.Instance, service string, lines int, follow bool) error {
	page, err := machine.Journal(ctx, inst.Agent(), service, lines, "")
	printLines(w, page.Lines)
	if err != nil || !follow {
		return err
	}
	if !page.Cursors {
		return withHint{err: fmt.Errorf("follow the journal of %s: the image's agent predates emu logs -f SERVICE", service), hint: "rebuild the image with this emu (emu build), or use emu logs -f for the console"}
	}
	cursor := page.Cursor
	tick := time.NewTicker(journalPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := instance.RunningPID(inst); err != nil {
			return nil
		}
		// No cursor yet (the journal was empty): everything is new.
		n := 0
		if cursor == "" {
			n = proto.MaxJournalLines
		}
		page, err := machine.Journal(ctx, inst.Agent(), service, n, cursor)
		printLines(w, page.Lines)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			if _, perr := instance.RunningPID(inst); perr != nil {
				return nil // stopped while we asked
			}
			return err
		case page.Cursor != "":
			cursor = page.Cursor
		}
	}
}

func printLines(w io.Writer, lines []string) {
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// catConsole prints the serial console log, and with follow keeps printing
// what the guest adds until ctx ends or QEMU exits.
func catConsole(ctx context.Context, w io.Writer, inst store.Instance, follow bool) error {
	f, err := os.Open(inst.Serial())
	if err != nil {
		return withHint{err: fmt.Errorf("no console log for %s: %w", inst.Name, err), hint: "emu up starts the instance"}
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil || !follow {
		return err
	}
	// The file gives no event on growth without inotify; a short interval
	// is plenty for a person reading a console.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if _, err := instance.RunningPID(inst); err != nil {
			return nil
		}
	}
}
