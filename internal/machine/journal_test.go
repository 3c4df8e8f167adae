package machine

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// fakeAgent answers one journal request on a unix socket with what answer
// returns for it.
func fakeAgent(t *testing.T, answer func(proto.Request) []event.Event) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		line, err := bufio.NewReader(conn).ReadBytes('\n')
		if err != nil {
			return
		}
		req, err := proto.ParseRequest(line)
		if err != nil {
			return
		}
		enc := event.NewEncoder(conn)
		for _, e := range answer(req) {
			enc.Encode(e)
		}
	}()
	return sock
}

func TestJournalSkipsOtherAnswers(t *testing.T) {
	var got proto.Request
	sock := fakeAgent(t, func(req proto.Request) []event.Event {
		got = req
		log := func(msg, id string) event.Event { return event.New(event.Log, "api", msg).With(proto.FieldReq, id) }
		return []event.Event{
			// Queued for a host that left: another request's answer.
			log("stale", "old"), log("", "old").With(proto.FieldEnd, "true").With(proto.FieldCursor, "c0"),
			event.New(event.Log, "db", "another service"),
			log("one", req.ID), log("two", req.ID),
			log("", req.ID).With(proto.FieldEnd, "true").With(proto.FieldCursor, "c2"),
		}
	})
	page, err := Journal(context.Background(), sock, "api", 0, "c0")
	if err != nil {
		t.Fatal(err)
	}
	want := JournalPage{Lines: []string{"one", "two"}, Cursor: "c2", Cursors: true}
	if diff := cmp.Diff(want, page); diff != "" {
		t.Errorf("page (-want +got):\n%s", diff)
	}
	if got.Op != proto.OpLogs || got.Service != "api" || got.Cursor != "c0" || got.ID == "" {
		t.Errorf("request = %+v", got)
	}
}

func TestJournalOldAgent(t *testing.T) {
	sock := fakeAgent(t, func(req proto.Request) []event.Event {
		return []event.Event{
			event.New(event.Log, "api", "one"),
			event.New(event.Log, "api", "").With(proto.FieldEnd, "true"),
		}
	})
	page, err := Journal(context.Background(), sock, "api", 10, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := (JournalPage{Lines: []string{"one"}}); !cmp.Equal(want, page) {
		t.Errorf("page = %+v, want %+v (no cursors)", page, want)
	}
}

func TestJournalError(t *testing.T) {
	sock := fakeAgent(t, func(req proto.Request) []event.Event {
		return []event.Event{event.New(event.Log, "nope", "").With(proto.FieldEnd, "true").With(proto.FieldReq, req.ID).With(proto.FieldError, `no service "nope"`)}
	})
	if _, err := Journal(context.Background(), sock, "nope", 10, ""); err == nil || err.Error() != `no service "nope"` {
		t.Errorf("Journal = %v", err)
	}
}
