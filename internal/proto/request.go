package proto

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
	// service and carrying the request's ID in the field "req", the last
	// one with the field "end" and the journal's cursor after the lines.
	OpLogs Op = "logs"
	// OpAck acknowledges a bake step's step.start event; ID is the step's
	// name. With Request.AckSteps the agent waits for it before it runs
	// the step, so the host has the step's name before the step can take
	// the guest down with it (a kernel crash in the step's first
	// millisecond otherwise loses the event in flight).
	OpAck Op = "ack"
	// OpExec runs Argv in the guest (in a container service's container
	// with Service), with a terminal when TTY; ID names the run in the
	// exec.output and exec.exit events it answers with.
	OpExec Op = "exec"
	// OpInput feeds Data to run ID's stdin; EOF closes it.
	OpInput Op = "input"
	// OpResize sets run ID's terminal to Rows x Cols.
	OpResize Op = "resize"
	// OpSignal sends Signal to run ID's process group.
	OpSignal Op = "signal"
	// OpResume tells a guest restored from a saved state that it runs
	// again: the agent steps its clock to Time, mixes Entropy into the
	// kernel's random pool, applies Runtime (services whose runtime env
	// changed restart), re-probes every service, and answers like a boot:
	// hello, the services' health, ready, each carrying ID (field "req"),
	// so the host tells them from events queued before the suspend.
	OpResume Op = "resume"
)

// MaxJournalLines bounds one OpLogs answer.
const MaxJournalLines = 10000

// Request is one host-to-guest line. Bake steps travel this way, not on the
// guest's disk, so that build-time secrets never reach the image.
type Request struct {
	Op    Op     `json:"op"`
	Steps []Step `json:"steps,omitempty"`
	// Services names the services to start before the bake steps run; the
	// others stay stopped (they usually need what the bake makes).
	Services []string `json:"services,omitempty"`
	// Service and Lines select a journal (OpLogs): its last Lines lines,
	// or with Cursor every line after it (Lines 0: up to MaxJournalLines).
	// Service is also the container service an OpExec runs in.
	Service string `json:"service,omitempty"`
	Lines   int    `json:"lines,omitempty"`
	Cursor  string `json:"cursor,omitempty"`
	// ID is echoed in the answer's events (field "req"), so a host tells
	// its answer from one queued for an earlier connection.
	ID string `json:"id,omitempty"`
	// Slim lists guest paths to remove after the bake.
	Slim []string `json:"slim,omitempty"`
	// Optimize lists the binaries to verify in the guest and install,
	// before the services start (OpProvision).
	Optimize []Binary `json:"optimize,omitempty"`
	// Images are loaded into the container engine before the services
	// start (OpProvision).
	Images []Image `json:"images,omitempty"`
	// Prune removes stopped containers, dangling images and build cache
	// after the bake (OpProvision).
	Prune bool `json:"prune,omitempty"`
	// Volumes are the named volumes the stack uses, created in the
	// engine before the bake (OpProvision).
	Volumes []string `json:"volumes,omitempty"`
	// AckSteps makes the agent wait for an OpAck of each step's start
	// before running it (OpProvision).
	AckSteps bool `json:"ack_steps,omitempty"`
	// Argv, Env, TTY, Rows and Cols start a run (OpExec); Data and EOF
	// feed it (OpInput); Signal signals it (OpSignal).
	Argv   []string          `json:"argv,omitempty"`
	Env    map[string]string `json:"env,omitempty"`
	TTY    bool              `json:"tty,omitempty"`
	Rows   uint16            `json:"rows,omitempty"`
	Cols   uint16            `json:"cols,omitempty"`
	Data   []byte            `json:"data,omitempty"`
	EOF    bool              `json:"eof,omitempty"`
	Signal int               `json:"signal,omitempty"`
	// Time, Entropy and Runtime are a resume's (OpResume).
	Time    time.Time `json:"time,omitzero"`
	Entropy []byte    `json:"entropy,omitempty"`
	Runtime *Runtime  `json:"runtime,omitempty"`
}

// Image is one image source the host attached as a read-only disk.
type Image struct {
	// Serial is the disk's serial, how the agent finds it.
	Serial string `json:"serial"`
	// Source names it for messages: the stack file's images entry.
	Source string `json:"source"`
	// IDs are the images it holds ("sha256:…"); each must be in the
	// engine after the load.
	IDs []string `json:"ids"`
}

// Binary is one file the host optimized: the agent runs each candidate with
// Verify and renames the first that passes over Dst, where the original
// lies; when none passes, the original stays.
type Binary struct {
	Dst string `json:"dst"`
	// Candidates, in order of preference (smallest first).
	Candidates []Candidate `json:"candidates"`
	// Verify is nil when the candidates need no run: the first is installed.
	Verify *Verify `json:"verify,omitempty"`
}

// Candidate is one optimized copy of a binary in the guest.
type Candidate struct {
	// Name is "compressed" or "stripped"; the original is "original".
	Name string `json:"name"`
	Path string `json:"path"`
}

// Verify is how a binary proves it still runs: it exits with ExitCode within
// Timeout and, when Output is set, prints it (stdout or stderr).
type Verify struct {
	Args     []string      `json:"args,omitempty"`
	ExitCode int           `json:"exit_code"`
	Output   string        `json:"output,omitempty"`
	Timeout  time.Duration `json:"timeout"`
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
