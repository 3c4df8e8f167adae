package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// at is t0 plus sec seconds.
func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func ev(sec int, kind Kind, name, msg string) Event {
	return Event{Time: at(sec), Kind: kind, Name: name, Msg: msg}
}

// decodeAll reads every event of r until io.EOF.
func decodeAll(t *testing.T, r io.Reader) []Event {
	t.Helper()
	dec := NewDecoder(r)
	var out []Event
	for {
		e, err := dec.Decode()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("Decode after %d events: %v", len(out), err)
		}
		out = append(out, e)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	events := []Event{
		ev(0, Hello, "demo", "agent up").With("mode", "provision").With("version", "v1"),
		ev(1, StageStart, "bake", "3 steps"),
		ev(2, StepOutput, "seed", `quotes " and \ backslash, tab	and <html> & unicode ✓`),
		ev(3, StepDone, "seed", "1.5s").WithCode(0),
		ev(4, StepFailed, "migrate", "exited").WithCode(3),
		ev(5, ServiceUnhealthy, "api", "probe failed").With("journal", "line 1\nline 2"),
		{Kind: Log}, // zero time, nothing else
		ev(6, Done, "", "provisioned"),
	}
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	for _, e := range events {
		if err := enc.Encode(e); err != nil {
			t.Fatalf("Encode(%v): %v", e, err)
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != len(events) {
		t.Errorf("encoded %d events as %d lines, want one line each:\n%s", len(events), n, buf.String())
	}
	got := decodeAll(t, &buf)
	if diff := cmp.Diff(events, got); diff != "" {
		t.Errorf("round trip mismatch (-want +got):\n%s", diff)
	}
}

func TestEncodeWireFormat(t *testing.T) {
	var buf bytes.Buffer
	if err := NewEncoder(&buf).Encode(ev(0, StepDone, "seed", "").WithCode(0)); err != nil {
		t.Fatal(err)
	}
	// Code 0 must survive omitempty: it is a pointer for that reason.
	want := `{"t":"2025-03-01T12:00:00Z","kind":"step.done","name":"seed","code":0}` + "\n"
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("wire format mismatch (-want +got):\n%s", diff)
	}
}

func TestEncoderConcurrent(t *testing.T) {
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	const writers, each = 8, 50
	done := make(chan struct{})
	for w := range writers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				_ = enc.Encode(ev(i, StepOutput, "w", strings.Repeat("x", w*100+i)))
			}
		}()
	}
	for range writers {
		<-done
	}
	if got := len(decodeAll(t, &buf)); got != writers*each {
		t.Errorf("decoded %d events, want %d (interleaved lines?)", got, writers*each)
	}
}

func TestDecodeSkipsBlankLines(t *testing.T) {
	in := "\n   \n" + `{"kind":"hello"}` + "\r\n\t\r\n\n" + `{"kind":"done"}` + "\n\n"
	got := decodeAll(t, strings.NewReader(in))
	want := []Event{{Kind: Hello}, {Kind: Done}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		wantErr string // substring
		is      error
	}{
		{"malformed", `{"kind":"hello"}` + "\n\n" + `{"kind":` + "\n", "event line 3:", nil},
		{"not an object", "\n[1,2]\n", "event line 2:", nil},
		{"missing kind", `{"kind":"hello"}` + "\n" + `{"name":"x"}` + "\n", "event line 2: missing kind", nil},
		{"null", "null\n", "event line 1: missing kind", nil},
		{"too long", `{"kind":"hello"}` + "\n" + `{"kind":"log","msg":"` + strings.Repeat("a", MaxLine) + `"}` + "\n", "event line 2:", ErrLineTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dec := NewDecoder(strings.NewReader(tc.in))
			var err error
			for range 10 {
				if _, err = dec.Decode(); err != nil {
					break
				}
			}
			if err == nil || errors.Is(err, io.EOF) {
				t.Fatalf("Decode error = %v, want one containing %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Decode error = %q, want it to contain %q", err, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("Decode error = %v, want errors.Is %v", err, tc.is)
			}
		})
	}
}

func TestDecodeContinuesAfterMalformedLine(t *testing.T) {
	dec := NewDecoder(strings.NewReader("garbage\n" + `{"kind":"done"}` + "\n"))
	if _, err := dec.Decode(); err == nil {
		t.Fatal("Decode(garbage) succeeded")
	}
	e, err := dec.Decode()
	if err != nil || e.Kind != Done {
		t.Errorf("Decode after a malformed line = %v, %v; want done, nil", e, err)
	}
}

func TestParse(t *testing.T) {
	e, err := Parse([]byte(`{"t":"2025-03-01T13:00:00+01:00","kind":"step.failed","name":"s","code":-1,"fields":{"a":"b"},"extra":1}`), 7)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{Time: t0, Kind: StepFailed, Name: "s", Fields: map[string]string{"a": "b"}}.WithCode(-1)
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
	if _, err := Parse([]byte(`{"kind":1}`), 7); err == nil || !strings.Contains(err.Error(), "event line 7") {
		t.Errorf("Parse(kind 1) error = %v, want one naming line 7", err)
	}
}

func TestEventHelpers(t *testing.T) {
	base := ev(0, Log, "x", "")
	with := base.With("a", "1")
	with2 := with.With("b", "2")
	if base.Fields != nil {
		t.Errorf("With changed the receiver: %v", base.Fields)
	}
	if diff := cmp.Diff(map[string]string{"a": "1"}, with.Fields); diff != "" {
		t.Errorf("With shares its map with the result (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"a": "1", "b": "2"}, with2.Fields); diff != "" {
		t.Errorf("With mismatch (-want +got):\n%s", diff)
	}
	c := base.WithCode(4)
	if base.Code != nil || c.Code == nil || *c.Code != 4 {
		t.Errorf("WithCode(4): receiver code %v, result code %v", base.Code, c.Code)
	}

	now := New(Ready, "n", "m")
	if now.Time.IsZero() || now.Time.Location() != time.UTC {
		t.Errorf("New time = %v, want a UTC timestamp", now.Time)
	}

	for _, tc := range []struct {
		e    Event
		want string
	}{
		{Event{Kind: Done}, "done"},
		{Event{Kind: StepFailed, Name: "seed", Msg: "boom"}.WithCode(3), "step.failed seed (exit 3): boom"},
		{Event{Kind: Log, Msg: "note"}, "log: note"},
		{Event{Kind: ServiceHealthy, Name: "api"}, "service.healthy api"},
	} {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}

	for k, want := range map[Kind]bool{Done: true, Failed: true, Ready: false, StepFailed: false, StageFailed: false, Hello: false} {
		if got := k.Terminal(); got != want {
			t.Errorf("%s.Terminal() = %v, want %v", k, got, want)
		}
	}
}

func TestTeeAndRecorder(t *testing.T) {
	var a, b Recorder
	var n int
	count := SinkFunc(func(Event) { n++ })
	s := Tee(&a, nil, count, &b)
	in := []Event{ev(0, Hello, "", ""), ev(1, Done, "", "ok")}
	for _, e := range in {
		s.Emit(e)
	}
	if diff := cmp.Diff(in, a.Events()); diff != "" {
		t.Errorf("first recorder (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(in, b.Events()); diff != "" {
		t.Errorf("second recorder (-want +got):\n%s", diff)
	}
	if n != len(in) {
		t.Errorf("SinkFunc called %d times, want %d", n, len(in))
	}

	// Events returns a copy: changing it leaves the recorder as it was.
	got := a.Events()
	got[0].Kind = Failed
	if a.Events()[0].Kind != Hello {
		t.Error("Recorder.Events shares its slice with the caller")
	}

	var empty Recorder
	if got := empty.Events(); len(got) != 0 {
		t.Errorf("empty Recorder.Events() = %v", got)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	var r Recorder
	const n = 100
	done := make(chan struct{})
	for i := range n {
		go func() {
			r.Emit(ev(i, Log, "", ""))
			_ = r.Events()
			done <- struct{}{}
		}()
	}
	for range n {
		<-done
	}
	if got := len(r.Events()); got != n {
		t.Errorf("recorded %d events, want %d", got, n)
	}
}

// FuzzDecode: the decoder never panics, and whatever it accepts re-encodes
// to a line that decodes to an equal event.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"t":"2025-03-01T12:00:00Z","kind":"hello","name":"demo","fields":{"mode":"run"}}` + "\n"))
	f.Add([]byte(`{"kind":"step.done","code":0}` + "\n\n" + `{"kind":"done"}`))
	f.Add([]byte("\r\n \t\n{\"kind\":\"log\",\"msg\":\"\\u00e9\\n\\\"\"}\r\n"))
	f.Add([]byte(`{"kind":"failed","name":"x","msg":"boom","code":-1,"fields":{}}`))
	f.Add([]byte(`{"t":"2025-03-01T13:00:00.123456789+01:00","kind":"x"}`))
	f.Add([]byte("{\"kind\":\"\xff\xfe\",\"msg\":\"\xc3\"}\n"))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"kind":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := NewDecoder(bytes.NewReader(data))
		for range 1000 {
			e, err := dec.Decode()
			if errors.Is(err, io.EOF) || errors.Is(err, ErrLineTooLong) {
				return
			}
			if err != nil {
				continue // a malformed line; the next may be fine
			}
			if e.Kind == "" {
				t.Fatalf("decoded an event without a kind from %q", data)
			}
			var buf bytes.Buffer
			if err := NewEncoder(&buf).Encode(e); err != nil {
				t.Fatalf("re-encode %#v: %v", e, err)
			}
			if !json.Valid(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))) || bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
				t.Fatalf("re-encoded %#v as %q, want one JSON line", e, buf.Bytes())
			}
			again, err := NewDecoder(&buf).Decode()
			if err != nil {
				t.Fatalf("decode re-encoded %q: %v", buf.Bytes(), err)
			}
			if diff := cmp.Diff(e, again, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("re-decoded event differs (-first +second):\n%s", diff)
			}
		}
	})
}

func TestEventData(t *testing.T) {
	type payload struct {
		Dst  string `json:"dst"`
		Size int64  `json:"size"`
	}
	e, err := New(Log, "optimize", "chose").WithData(payload{Dst: "/bin/app", Size: 42})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := NewEncoder(&buf).Encode(e); err != nil {
		t.Fatal(err)
	}
	got, err := NewDecoder(&buf).Decode()
	if err != nil {
		t.Fatal(err)
	}
	var p payload
	if err := got.DecodeData(&p); err != nil || p.Dst != "/bin/app" || p.Size != 42 {
		t.Errorf("DecodeData = %+v, %v", p, err)
	}
	if err := New(Log, "x", "").DecodeData(&p); err == nil {
		t.Error("DecodeData of an event without data: no error")
	}
}
