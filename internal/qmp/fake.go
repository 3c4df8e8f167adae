package qmp

import (
	"encoding/json"
	"net"
	"sync"
	"time"
)

// Fake is a QMP monitor for tests, serving one end of a net.Pipe. It answers
// qmp_capabilities, query-status, system_powerdown and quit, and any command
// given a Handle; other commands get a CommandNotFound error.
type Fake struct {
	conn net.Conn
	done chan struct{}

	writeMu sync.Mutex

	mu               sync.Mutex
	status           Status
	handlers         map[string]FakeHandler
	commands         []string
	args             []json.RawMessage
	silent           bool
	silentHandshake  bool
	shutdownOnPowerD bool
	quitHangUp       bool
	before           []Event
}

// FakeHandler answers one command: a result to return, or an error reply.
type FakeHandler func(args json.RawMessage) (result any, err *Error)

// FakeOption configures a Fake.
type FakeOption func(*Fake)

// FakeStatus sets what query-status reports (default running).
func FakeStatus(s Status) FakeOption { return func(f *Fake) { f.status = s } }

// FakeSilent completes the handshake, then reads commands and never answers.
func FakeSilent() FakeOption { return func(f *Fake) { f.silent = true } }

// FakeSilentHandshake sends the greeting and never answers qmp_capabilities.
func FakeSilentHandshake() FakeOption { return func(f *Fake) { f.silentHandshake = true } }

// FakeShutdownOnPowerDown makes system_powerdown emit SHUTDOWN after
// POWERDOWN and set the status to shutdown, as a guest that obeys would.
func FakeShutdownOnPowerDown() FakeOption { return func(f *Fake) { f.shutdownOnPowerD = true } }

// FakeQuitHangUp makes quit close the connection without replying, as QEMU
// sometimes does when it exits first.
func FakeQuitHangUp() FakeOption { return func(f *Fake) { f.quitHangUp = true } }

// FakeEventsBeforeReplies sends these events before every reply after the handshake.
func FakeEventsBeforeReplies(events ...Event) FakeOption {
	return func(f *Fake) { f.before = append(f.before, events...) }
}

// FakeHandle answers cmd with h, overriding the built-in behaviour.
func FakeHandle(cmd string, h FakeHandler) FakeOption {
	return func(f *Fake) { f.handlers[cmd] = h }
}

// NewFake starts a fake monitor and returns it and the client's end of the pipe.
func NewFake(opts ...FakeOption) (*Fake, net.Conn) {
	server, client := net.Pipe()
	f := &Fake{
		conn:     server,
		done:     make(chan struct{}),
		status:   Status{Running: true, Status: "running"},
		handlers: map[string]FakeHandler{},
	}
	for _, o := range opts {
		o(f)
	}
	go f.serve()
	return f, client
}

// Commands returns the commands received so far, in order, including qmp_capabilities.
func (f *Fake) Commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.commands...)
}

// Args returns the arguments of each received command, parallel to Commands.
func (f *Fake) Args() []json.RawMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]json.RawMessage(nil), f.args...)
}

// Count reports how many times cmd was received.
func (f *Fake) Count(cmd string) int {
	n := 0
	for _, c := range f.Commands() {
		if c == cmd {
			n++
		}
	}
	return n
}

// SetStatus changes what query-status reports.
func (f *Fake) SetStatus(s Status) {
	f.mu.Lock()
	f.status = s
	f.mu.Unlock()
}

// Emit sends an event now.
func (f *Fake) Emit(name string, data any) error {
	return f.write(eventMsg(name, data))
}

// Close ends the monitor, as if QEMU died.
func (f *Fake) Close() error { return f.conn.Close() }

// Done is closed when the fake has stopped serving.
func (f *Fake) Done() <-chan struct{} { return f.done }

func eventMsg(name string, data any) map[string]any {
	now := time.Now()
	m := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
	}
	if data != nil {
		m["data"] = data
	}
	return m
}

func (f *Fake) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	_, err = f.conn.Write(append(b, '\n'))
	return err
}

func (f *Fake) serve() {
	defer close(f.done)
	defer f.conn.Close()
	greeting := map[string]any{"QMP": map[string]any{
		"version":      map[string]any{"qemu": map[string]int{"major": 9, "minor": 2, "micro": 0}, "package": "fake"},
		"capabilities": []string{"oob"},
	}}
	if f.write(greeting) != nil {
		return
	}
	dec := json.NewDecoder(f.conn)
	negotiated := false
	for {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        json.RawMessage `json:"id"`
		}
		if dec.Decode(&req) != nil {
			return
		}
		f.mu.Lock()
		f.commands = append(f.commands, req.Execute)
		f.args = append(f.args, req.Arguments)
		silent := f.silent && negotiated || f.silentHandshake
		before := f.before
		f.mu.Unlock()
		if silent {
			continue
		}
		if negotiated {
			for _, e := range before {
				var data any
				if len(e.Data) > 0 {
					data = e.Data
				}
				if f.write(eventMsg(e.Name, data)) != nil {
					return
				}
			}
		}
		result, qerr, after, quit := f.answer(req.Execute, req.Arguments, negotiated)
		if quit && f.quitHangUp {
			return
		}
		if req.Execute == "qmp_capabilities" && qerr == nil {
			negotiated = true
		}
		resp := map[string]any{}
		if req.ID != nil {
			resp["id"] = req.ID
		}
		if qerr != nil {
			resp["error"] = qerr
		} else {
			if result == nil {
				result = struct{}{}
			}
			resp["return"] = result
		}
		if f.write(resp) != nil {
			return
		}
		for _, e := range after {
			if f.write(e) != nil {
				return
			}
		}
		if quit {
			return
		}
	}
}

// answer returns the reply to cmd, events to send after it, and whether to hang up.
func (f *Fake) answer(cmd string, args json.RawMessage, negotiated bool) (any, *Error, []any, bool) {
	f.mu.Lock()
	h := f.handlers[cmd]
	f.mu.Unlock()
	if h != nil {
		res, err := h(args)
		return res, err, nil, false
	}
	if !negotiated && cmd != "qmp_capabilities" {
		return nil, &Error{Class: "CommandNotFound", Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"}, nil, false
	}
	switch cmd {
	case "qmp_capabilities":
		if negotiated {
			return nil, &Error{Class: "CommandNotFound", Desc: "Capabilities negotiation is already complete, command ignored"}, nil, false
		}
		return nil, nil, nil, false
	case "query-status":
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.status, nil, nil, false
	case "system_powerdown":
		after := []any{eventMsg("POWERDOWN", nil)}
		f.mu.Lock()
		if f.shutdownOnPowerD {
			after = append(after, eventMsg("SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"}))
			f.status = Status{Running: false, Status: "shutdown"}
		}
		f.mu.Unlock()
		return nil, nil, after, false
	case "quit":
		return nil, nil, nil, true
	}
	return nil, &Error{Class: "CommandNotFound", Desc: "The command " + cmd + " has not been found"}, nil, false
}
