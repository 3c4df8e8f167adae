package machine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
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
// lines or, with cursor, the lines after it (up to proto.MaxJournalLines).
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
	if err := vm.Send(proto.Request{Op: proto.OpLogs, Service: service, Lines: lines, Cursor: cursor, ID: id}); err != nil {
		return page, err
	}
	var jerr error
	end, _ := follow(ctx, vm, nil, func(e event.Event) (bool, error) {
		// An answer queued for an earlier connection has another
		// request's ID; an older agent sends none.
		if e.Kind != event.Log || e.Name != service || (e.Fields[proto.FieldReq] != "" && e.Fields[proto.FieldReq] != id) {
			return false, nil
		}
		if e.Fields[proto.FieldEnd] == "true" {
			if msg := e.Fields[proto.FieldError]; msg != "" {
				jerr = errors.New(msg)
				return true, nil
			}
			page.Cursor, page.Cursors = e.Fields[proto.FieldCursor]
			return true, nil
		}
		page.Lines = append(page.Lines, e.Msg)
		return false, nil
	})
	switch end {
	case endClosed:
		return page, errors.New("the agent's channel closed before the journal ended")
	case endCtx:
		return page, fmt.Errorf("fetch journal of %s: %w", service, ctx.Err())
	}
	return page, jerr
}

// AgentStatus asks the agent to replay the services' state and folds what
// it sends within d.
func AgentStatus(ctx context.Context, sock string, d time.Duration) (event.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var st event.Status
	vm, err := Connect(ctx, sock)
	if err != nil {
		return st, err
	}
	defer vm.Close()
	if err := vm.Send(proto.Request{Op: proto.OpStatus}); err != nil {
		return st, err
	}
	end, _ := follow(ctx, vm, nil, func(e event.Event) (bool, error) {
		st = event.Fold(st, e)
		return e.Kind == event.Ready, nil
	})
	if end == endCtx && st.Hello == nil {
		return st, fmt.Errorf("the agent did not answer within %s (another emu command may hold its channel)", d)
	}
	return st, nil
}
