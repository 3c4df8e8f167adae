package machine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emu-dev/emu/internal/event"
)

// JournalPage is one answer to a journal request.
type JournalPage struct {
	Lines []string
	// Cursor is the journal's position after the last line; "" when the
	// journal has no line yet.
	Cursor string
	// Cursors is false from an agent that predates cursors.
	Cursors bool
}

// Journal fetches a service's journal through the agent: its last lines
// lines or, with cursor, the lines after it (up to event.MaxJournalLines).
func Journal(ctx context.Context, sock, service string, lines int, cursor string) (JournalPage, error) {
	var page JournalPage
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	vm, err := Connect(ctx, sock)
	if err != nil {
		return page, err
	}
	defer vm.Close()
	id := randomID()
	if err := vm.Send(event.Request{Op: event.OpLogs, Service: service, Lines: lines, Cursor: cursor, ID: id}); err != nil {
		return page, err
	}
	for {
		select {
		case e, ok := <-vm.Events:
			if !ok {
				return page, errors.New("the agent's channel closed before the journal ended")
			}
			// An answer queued for an earlier connection has another
			// request's ID; an older agent sends none.
			if e.Kind != event.Log || e.Name != service || (e.Fields["req"] != "" && e.Fields["req"] != id) {
				continue
			}
			if e.Fields["end"] == "true" {
				if msg := e.Fields["error"]; msg != "" {
					return page, errors.New(msg)
				}
				page.Cursor, page.Cursors = e.Fields["cursor"]
				return page, nil
			}
			page.Lines = append(page.Lines, e.Msg)
		case <-ctx.Done():
			return page, fmt.Errorf("fetch journal of %s: %w", service, ctx.Err())
		}
	}
}
