package event

import (
	"encoding/json"
	"fmt"
	"time"
)

// Op names what the host asks of the agent.
type Op string

const (
	// OpProvision runs bake steps, then slims the system and shuts down.
	OpProvision Op = "provision"
	// OpShutdown stops the services cleanly and powers the guest off.
	OpShutdown Op = "shutdown"
	// OpStatus asks the agent to replay the services' current state.
	OpStatus Op = "status"
	// OpLogs asks for a service's journal: log events named after the
	// service, the last one with the field "end".
	OpLogs Op = "logs"
)

// Request is one host-to-guest line. Bake steps travel this way, not on the
// guest's disk, so that build-time secrets never reach the image.
type Request struct {
	Op    Op     `json:"op"`
	Steps []Step `json:"steps,omitempty"`
	// Services names the services to start before the bake steps run; the
	// others stay stopped (they usually need what the bake makes).
	Services []string `json:"services,omitempty"`
	// Service and Lines select a journal (OpLogs).
	Service string `json:"service,omitempty"`
	Lines   int    `json:"lines,omitempty"`
	// Slim lists guest paths to remove after the bake.
	Slim []string `json:"slim,omitempty"`
}

// Step is one bake step as the agent runs it.
type Step struct {
	Name    string            `json:"name"`
	Run     []string          `json:"run"`
	Env     map[string]string `json:"env,omitempty"`
	User    string            `json:"user,omitempty"`
	Dir     string            `json:"dir,omitempty"`
	Timeout time.Duration     `json:"timeout"`
}

// EncodeRequest returns r as one JSON line.
func EncodeRequest(r Request) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode request %s: %w", r.Op, err)
	}
	return append(b, '\n'), nil
}

// ParseRequest decodes one request line.
func ParseRequest(b []byte) (Request, error) {
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return Request{}, fmt.Errorf("decode request: %w", err)
	}
	if r.Op == "" {
		return Request{}, fmt.Errorf("decode request: missing op")
	}
	return r, nil
}
