// Package event is the one event type shared by the host and the guest agent,
// its JSON-lines codec, and the reducer that folds a stream into a Status.
//
// It imports only the standard library: the guest agent links it, and the
// agent must stay small.
package event

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Kind names what happened.
type Kind string

const (
	// Hello is the agent's first event: it is up and reading requests.
	Hello Kind = "hello"

	StageStart  Kind = "stage.start"
	StageDone   Kind = "stage.done"
	StageFailed Kind = "stage.failed"
	// StageProgress reports how far a running stage is, in its Fields
	// (FieldDone and FieldTotal, in bytes, for a transfer).
	StageProgress Kind = "stage.progress"

	StepStart  Kind = "step.start"
	StepOutput Kind = "step.output"
	StepDone   Kind = "step.done"
	StepFailed Kind = "step.failed"

	ServiceStarting  Kind = "service.starting"
	ServiceHealthy   Kind = "service.healthy"
	ServiceUnhealthy Kind = "service.unhealthy"

	// Ready: every service is healthy.
	Ready Kind = "ready"
	// Log is free text worth keeping (a notice, a warning).
	Log Kind = "log"

	// ExecOutput carries a run's output (Data; the field "stream" says
	// stdout or stderr), ExecExit its end (Code); Name is the run's ID.
	ExecOutput Kind = "exec.output"
	ExecExit   Kind = "exec.exit"

	// Done and Failed end a stream; every stream ends with exactly one.
	Done   Kind = "done"
	Failed Kind = "failed"
)

// Fields of a stage.progress event: bytes done so far and in all.
const (
	FieldDone  = "done_bytes"
	FieldTotal = "total_bytes"
)

// Terminal reports whether k ends a stream.
func (k Kind) Terminal() bool { return k == Done || k == Failed }

// Event is one line of the wire protocol and one entry of provision.log.
type Event struct {
	Time time.Time `json:"t"`
	Kind Kind      `json:"kind"`
	// Name is the stage, step or service the event is about.
	Name string `json:"name,omitempty"`
	Msg  string `json:"msg,omitempty"`
	// Code is a step's exit code (step.done, step.failed).
	Code *int `json:"code,omitempty"`
	// Fields carries small structured facts: a stage's output size, a
	// service's ports, the agent's version.
	Fields map[string]string `json:"fields,omitempty"`
	// Data is a typed payload, for what is more than a few strings (the
	// guest's choice for an optimized binary); proto names its types.
	Data json.RawMessage `json:"data,omitempty"`
}

// New returns an event stamped with the current time.
func New(kind Kind, name, msg string) Event {
	return Event{Time: time.Now().UTC(), Kind: kind, Name: name, Msg: msg}
}

// WithCode returns e carrying the exit code c.
func (e Event) WithCode(c int) Event {
	e.Code = &c
	return e
}

// With returns e with the field k set to v.
func (e Event) With(k, v string) Event {
	f := make(map[string]string, len(e.Fields)+1)
	for key, val := range e.Fields {
		f[key] = val
	}
	f[k] = v
	e.Fields = f
	return e
}

// WithData returns e carrying v, encoded as its Data.
func (e Event) WithData(v any) (Event, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return e, fmt.Errorf("encode %s payload: %w", e.Kind, err)
	}
	e.Data = b
	return e, nil
}

// DecodeData decodes e's Data into v.
func (e Event) DecodeData(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("%s %s carries no data", e.Kind, e.Name)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("decode %s %s payload: %w", e.Kind, e.Name, err)
	}
	return nil
}

// String renders e as one human line, without the time.
func (e Event) String() string {
	s := string(e.Kind)
	if e.Name != "" {
		s += " " + e.Name
	}
	if e.Code != nil {
		s += fmt.Sprintf(" (exit %d)", *e.Code)
	}
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

// MaxLine bounds one encoded event; a longer line is a protocol error.
const MaxLine = 1 << 20

// ErrLineTooLong is returned for a line over MaxLine bytes.
var ErrLineTooLong = errors.New("event line too long")

// Decoder reads events from JSON lines.
type Decoder struct {
	sc   *bufio.Scanner
	line int
}

// NewDecoder returns a decoder reading r.
func NewDecoder(r io.Reader) *Decoder {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), MaxLine)
	return &Decoder{sc: sc}
}

// Decode returns the next event, or io.EOF at the end of the stream.
// Blank lines are skipped. A malformed line is an error naming its number.
func (d *Decoder) Decode() (Event, error) {
	for d.sc.Scan() {
		d.line++
		b := d.sc.Bytes()
		if len(trimSpace(b)) == 0 {
			continue
		}
		return Parse(b, d.line)
	}
	if err := d.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Event{}, fmt.Errorf("event line %d: %w", d.line+1, ErrLineTooLong)
		}
		return Event{}, err
	}
	return Event{}, io.EOF
}

// Parse decodes one line; line is used in the error only.
func Parse(b []byte, line int) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("event line %d: %w", line, err)
	}
	if e.Kind == "" {
		return Event{}, fmt.Errorf("event line %d: missing kind", line)
	}
	return e, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Encoder writes events as JSON lines; it is safe for concurrent use.
type Encoder struct {
	mu sync.Mutex
	w  io.Writer
}

// NewEncoder returns an encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Encode writes e as one line.
func (enc *Encoder) Encode(e Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", e.Kind, err)
	}
	b = append(b, '\n')
	enc.mu.Lock()
	defer enc.mu.Unlock()
	_, err = enc.w.Write(b)
	return err
}

// Sink receives events. Implementations must be safe for concurrent use.
type Sink interface {
	Emit(Event)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Event)

// Emit calls f(e).
func (f SinkFunc) Emit(e Event) { f(e) }

// Tee returns a sink that emits to each of sinks in order.
func Tee(sinks ...Sink) Sink {
	return SinkFunc(func(e Event) {
		for _, s := range sinks {
			if s != nil {
				s.Emit(e)
			}
		}
	})
}

// Recorder is an in-memory sink, for tests and for the status of a run.
type Recorder struct {
	mu     sync.Mutex
	events []Event
}

// Emit records e.
func (r *Recorder) Emit(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// Events returns a copy of what was recorded.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}
