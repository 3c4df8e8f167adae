// Package qmp is a small client for the QEMU Machine Protocol: the handful of
// commands emu needs, each taking a context.
package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// maxEvents is how many recent asynchronous events a Client keeps.
const maxEvents = 64

// maxLogBytes bounds a message in the debug log; replies can be huge.
const maxLogBytes = 4096

// ErrClosed is returned by calls on a Client after Close.
var ErrClosed = errors.New("qmp client closed")

// errLost marks a connection that ended after the command was sent.
var errLost = errors.New("qmp connection lost")

// Error is an error reply from QEMU.
type Error struct {
	Command string `json:"-"`
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event such as SHUTDOWN or POWERDOWN.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data,omitempty"`
	Time time.Time       `json:"-"`
}

// Status is the reply to query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "prelaunch", "running", "paused", "shutdown", ...
}

// Option configures a Client.
type Option func(*Client)

// WithLogger logs each command and reply at debug level (what --debug shows).
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}

// WithEventHandler calls fn for each event, on the client's reader goroutine:
// fn must not block or call the Client.
func WithEventHandler(fn func(Event)) Option {
	return func(c *Client) { c.onEvent = fn }
}

// Client is a negotiated QMP connection. Its methods are safe for concurrent use.
type Client struct {
	conn    net.Conn
	dec     *json.Decoder
	log     *slog.Logger
	onEvent func(Event)

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	events  []Event
	closed  bool
	// newEvent is closed, and replaced, at each event: WaitEvent's wake-up.
	newEvent chan struct{}

	done    chan struct{} // closed when the reader goroutine ends
	readErr error         // why it ended; set before done is closed
	once    sync.Once
}

type reply struct {
	ret json.RawMessage
	err *Error
}

// message is any message from QEMU: greeting, reply or event.
type message struct {
	QMP       json.RawMessage `json:"QMP"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to the QMP unix socket at path and negotiates capabilities.
// ctx bounds the connect and the handshake.
func Dial(ctx context.Context, path string, opts ...Option) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	c, err := New(ctx, conn, opts...)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return c, nil
}

// New negotiates capabilities over conn, which the Client then owns: it is
// closed on failure and by Close. ctx bounds the handshake.
func New(ctx context.Context, conn net.Conn, opts ...Option) (*Client, error) {
	c := &Client{
		conn:     conn,
		dec:      json.NewDecoder(conn), // no line limit: replies can be megabytes
		log:      slog.New(slog.DiscardHandler),
		pending:  map[uint64]chan reply{},
		done:     make(chan struct{}),
		newEvent: make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	if err := c.handshake(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

func (c *Client) handshake(ctx context.Context) (err error) {
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer func() {
		switch {
		case !stop():
			err = fmt.Errorf("qmp handshake: %w", context.Cause(ctx))
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The conn deadline, copied from ctx, may fire just before ctx does.
			err = fmt.Errorf("qmp handshake: %w (%w)", context.DeadlineExceeded, err)
		}
	}()

	var raw json.RawMessage
	if err := c.dec.Decode(&raw); err != nil {
		return fmt.Errorf("read qmp greeting: %w", err)
	}
	var greeting message
	if err := json.Unmarshal(raw, &greeting); err != nil || greeting.QMP == nil {
		return fmt.Errorf("read qmp greeting: not a QMP greeting: %s", c.trim(raw))
	}
	c.log.Debug("qmp greeting", "msg", c.trim(raw))
	c.nextID++
	id := c.nextID
	if err := c.send(ctx, "qmp_capabilities", nil, id, nil); err != nil {
		return err
	}
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			return fmt.Errorf("read qmp_capabilities reply: %w", err)
		}
		switch {
		case m.Event != "":
			c.addEvent(m)
		case m.Error != nil:
			m.Error.Command = "qmp_capabilities"
			return m.Error
		case m.Return != nil:
			c.log.Debug("qmp recv", "cmd", "qmp_capabilities", "return", json.RawMessage(m.Return))
			return c.conn.SetDeadline(time.Time{})
		}
	}
}

// readLoop is the only reader after the handshake: it routes replies by id
// and records events.
func (c *Client) readLoop() {
	var err error
	for {
		var raw json.RawMessage
		if err = c.dec.Decode(&raw); err != nil {
			break
		}
		var m message
		if err = json.Unmarshal(raw, &m); err != nil {
			err = fmt.Errorf("decode qmp message: %w", err)
			break
		}
		if m.Event != "" {
			c.log.Debug("qmp event", "msg", c.trim(raw))
			c.addEvent(m)
			continue
		}
		id, perr := strconv.ParseUint(string(m.ID), 10, 64)
		c.mu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if perr != nil || !ok {
			c.log.Debug("qmp reply nobody waits for", "msg", c.trim(raw))
			continue
		}
		c.log.Debug("qmp recv", "id", id, "msg", c.trim(raw))
		ch <- reply{ret: m.Return, err: m.Error} // buffered
	}
	c.mu.Lock()
	if c.closed {
		err = ErrClosed
	}
	c.readErr = err
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) addEvent(m message) {
	e := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		e.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	c.mu.Lock()
	if len(c.events) == maxEvents {
		c.events = append(c.events[:0], c.events[1:]...)
	}
	c.events = append(c.events, e)
	close(c.newEvent)
	c.newEvent = make(chan struct{})
	c.mu.Unlock()
	if c.onEvent != nil {
		c.onEvent(e)
	}
}

// Events returns the most recent asynchronous events, oldest first.
func (c *Client) Events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.events...)
}

// Done is closed when the connection has ended (QEMU exited, or Close).
func (c *Client) Done() <-chan struct{} { return c.done }

// Execute runs cmd with args (nil, or anything that marshals to a JSON
// object) and decodes the reply's "return" into result (if non-nil). An error
// reply is a *Error.
func (c *Client) Execute(ctx context.Context, cmd string, args, result any) error {
	ret, err := c.execute(ctx, cmd, args, nil)
	if err != nil {
		var qe *Error
		if errors.As(err, &qe) {
			return err
		}
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(ret, result); err != nil {
		return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
	}
	return nil
}

// execute sends cmd and waits for its reply; oob, when set, travels with
// the command as socket control data (a descriptor for getfd).
func (c *Client) execute(ctx context.Context, cmd string, args any, oob []byte) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	select {
	case <-c.done:
		c.mu.Unlock()
		return nil, fmt.Errorf("connection closed: %w", c.readErr)
	default:
	}
	c.nextID++
	id := c.nextID
	ch := make(chan reply, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	if err := c.send(ctx, cmd, args, id, oob); err != nil {
		forget()
		return nil, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			r.err.Command = cmd
			return nil, r.err
		}
		return r.ret, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("wait for reply: %w", context.Cause(ctx))
	case <-c.done:
		// The reader may have delivered the reply just before it ended.
		select {
		case r := <-ch:
			if r.err != nil {
				r.err.Command = cmd
				return nil, r.err
			}
			return r.ret, nil
		default:
		}
		forget()
		if errors.Is(c.readErr, ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: %w", errLost, c.readErr)
	}
}

// send writes one command, bounded by ctx. A partial write leaves the stream
// unusable, so the connection is closed then.
func (c *Client) send(ctx context.Context, cmd string, args any, id uint64, oob []byte) error {
	req := struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
		ID        uint64          `json:"id"`
	}{Execute: cmd, ID: id}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("encode arguments: %w", err)
		}
		b = bytes.TrimSpace(b)
		if !bytes.Equal(b, []byte("null")) {
			if len(b) == 0 || b[0] != '{' {
				return fmt.Errorf("encode arguments: not a JSON object: %s", c.trim(b))
			}
			req.Arguments = b
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode command: %w", err)
	}
	c.log.Debug("qmp send", "id", id, "msg", c.trim(b))
	b = append(b, '\n')

	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	dl, _ := ctx.Deadline()
	c.conn.SetWriteDeadline(dl)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		c.conn.SetWriteDeadline(time.Now())
	})
	var n int
	if oob != nil {
		uc, ok := c.conn.(*net.UnixConn)
		if !ok {
			err = errors.New("passing a file descriptor needs a unix socket")
		} else {
			n, _, err = uc.WriteMsgUnix(b, oob, nil)
		}
	} else {
		n, err = c.conn.Write(b)
	}
	if !stop() {
		<-fired // so it cannot touch the next writer's deadline
	}
	if err != nil {
		if n > 0 {
			c.conn.Close()
		}
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
		}
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

func (c *Client) trim(b []byte) string {
	if len(b) > maxLogBytes {
		return fmt.Sprintf("%s... (%d bytes)", b[:maxLogBytes], len(b))
	}
	return string(b)
}

// Status runs query-status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// PowerDown runs system_powerdown: an ACPI power-button press the guest may ignore.
func (c *Client) PowerDown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit runs quit. QEMU may close the connection as it exits before or
// after replying; both are success.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, errLost) && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF)) {
		return nil
	}
	return err
}

// Close closes the connection and waits for the reader to stop. Pending calls
// return ErrClosed.
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		err = c.conn.Close()
		<-c.done
		if errors.Is(err, net.ErrClosed) {
			err = nil // a failed write closed it already
		}
	})
	return err
}
