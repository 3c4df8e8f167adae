package proto

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRequestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  Request
	}{
		{"provision", Request{
			Op: OpProvision,
			Steps: []Step{
				{Name: "a", Run: []string{"/bin/sh", "-c", "echo 'hi' \"there\""}, Env: map[string]string{"SECRET": "s3cr=t"}, User: "postgres", Dir: "/srv", Timeout: 90 * time.Second},
				{Name: "b", Run: []string{"true"}},
			},
			Services: []string{"db", "api"},
			Slim:     []string{"/usr/share/doc"},
		}},
		{"shutdown", Request{Op: OpShutdown}},
		{"status", Request{Op: OpStatus}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeRequest(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Count(b, []byte("\n")) != 1 || b[len(b)-1] != '\n' {
				t.Errorf("EncodeRequest = %q, want one line ending in a newline", b)
			}
			got, err := ParseRequest(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.req, got); diff != "" {
				t.Errorf("round trip mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"malformed", `{"op":`, "decode request:"},
		{"missing op", `{"steps":[]}`, "decode request: missing op"},
		{"bad type", `{"op":"provision","steps":"x"}`, "decode request:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseRequest(%s) error = %v, want one containing %q", tc.in, err, tc.want)
			}
		})
	}
}
