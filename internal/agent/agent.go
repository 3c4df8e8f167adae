package agent

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// Options configure one agent run.
type Options struct {
	Config proto.Config
	Mode   proto.Mode
	// Conn is the host channel (the virtio-serial port).
	Conn io.ReadWriter
	// Console receives a copy of every event, one human line each.
	Console io.Writer
	// System starts, stops and inspects units; nil means no init system to
	// talk to (the test initramfs), where services cannot be started.
	System System
	// PowerOff ends the guest; nil means return from Start instead.
	PowerOff func() error
	// Roots to trim after the bake; default "/".
	TrimPaths []string
	// Setup runs before the services start: the runtime config and the
	// network (SetupRuntime). nil skips it. The forwards it returns are
	// made reachable once the services are healthy (relayPorts).
	Setup func(ctx context.Context) (proto.Runtime, error)
	// SetClock, AddEntropy and ApplyRuntime serve a resume (OpResume);
	// nil skips each. ApplyRuntime writes the new runtime config's env
	// and says whether it changed.
	SetClock     func(time.Time) error
	AddEntropy   func([]byte) error
	ApplyRuntime func(ctx context.Context, rt proto.Runtime) (changed bool, err error)
	// RelayAddr is where the host's forwards arrive: GuestAddr by default;
	// tests use another loopback address.
	RelayAddr string
	// Redirect, when set, sends the forwards to guest port port (held
	// on 127.0.0.1 only) to that listener in the kernel instead of through
	// a relay (NAT.Redirect).
	Redirect func(port int) error
	// Engine is the container engine; nil when the guest has none.
	Engine Engine
	// SysBlock is sysfs's block directory (default /sys/block), where
	// image disks are found by serial. Tests point it at a temp dir.
	SysBlock string
	// SlimDefaults are the globs removed after every bake besides the
	// request's own; nil means DefaultSlim. Tests point it at a temp dir.
	SlimDefaults []string
	// OptimizeDir holds the host's optimized candidates; default
	// OptimizeDir. Tests point it at a temp dir.
	OptimizeDir string
	Version     string
	// WatchInterval is how often healthy services are probed again;
	// default 5 s.
	WatchInterval time.Duration
}

// Agent is one running agent.
type Agent struct {
	opts    Options
	out     chan event.Event
	flushed chan struct{}

	mu     sync.Mutex
	status event.Status
	// replay holds the latest event per service, re-sent on OpStatus.
	replay map[string]event.Event
	// closed is set when out is closed: the request reader and the service
	// goroutines can outlive Start, and what they emit then is dropped.
	closed bool
	// relays are the loopback relays' listeners (relayPorts).
	relays       []net.Listener
	relaysClosed bool
	// execs are the commands the host runs (emu exec), by ID; room is
	// poked each time the writer takes an event (emitWait).
	execs map[string]*execRun
	room  chan struct{}
	// probing is held by a resume for its whole run and by each round of
	// watch, which skips a round while a resume runs.
	probing sync.Mutex
}

// outBuffer bounds the events queued for the host; when the host is not
// connected (after `emu up` returned), the oldest are dropped, and OpStatus
// replays the current state on the next connection.
const outBuffer = 4096

// Start runs the agent until its work is done, ctx ends, or a shutdown
// request was served. It returns the error that ended the run, if any.
func Start(ctx context.Context, opts Options) error {
	if opts.Mode == "" {
		opts.Mode = proto.Run
	}
	if len(opts.TrimPaths) == 0 {
		opts.TrimPaths = []string{"/"}
	}
	if opts.SlimDefaults == nil {
		opts.SlimDefaults = DefaultSlim
	}
	if opts.OptimizeDir == "" {
		opts.OptimizeDir = proto.OptimizeDir
	}
	a := &Agent{
		opts:    opts,
		out:     make(chan event.Event, outBuffer),
		flushed: make(chan struct{}),
		replay:  map[string]event.Event{},
		execs:   map[string]*execRun{},
		room:    make(chan struct{}, 1),
	}
	go a.writeLoop()
	reqs := make(chan proto.Request)
	go a.readLoop(ctx, reqs)

	a.emit(a.hello("agent up"))

	var err error
	switch opts.Mode {
	case proto.Provision:
		err = a.provision(ctx, reqs)
	case proto.Run:
		err = a.serve(ctx, reqs)
	default:
		err = fmt.Errorf("unknown agent mode %q", opts.Mode)
		a.emit(event.New(event.Failed, "", err.Error()))
	}
	a.mu.Lock()
	a.closed = true
	close(a.out)
	a.mu.Unlock()
	select {
	case <-a.flushed:
	case <-time.After(5 * time.Second):
	}
	if opts.PowerOff != nil && (err == nil || opts.Mode == proto.Provision) {
		if perr := opts.PowerOff(); perr != nil {
			return errors.Join(err, fmt.Errorf("power off: %w", perr))
		}
	}
	return err
}

// hello is the agent's first event on a channel.
func (a *Agent) hello(msg string) event.Event {
	return event.New(event.Hello, a.opts.Config.Stack, msg).
		With(proto.FieldMode, string(a.opts.Mode)).With(proto.FieldVersion, a.opts.Version).
		With(proto.FieldResume, "true")
}

func (a *Agent) emit(e event.Event) {
	// The lock is held through the send, which never blocks, so that out
	// cannot be closed in between.
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.status = event.Fold(a.status, e)
	switch e.Kind {
	case event.ServiceStarting, event.ServiceHealthy, event.ServiceUnhealthy:
		a.replay[e.Name] = e
	}
	if a.opts.Console != nil {
		fmt.Fprintf(a.opts.Console, "emu-agent: %s\n", e)
	}
	for {
		select {
		case a.out <- e:
			return
		default:
			// Full: the host is away. Drop the oldest, keep the newest.
			select {
			case <-a.out:
			default:
			}
		}
	}
}

func (a *Agent) writeLoop() {
	defer close(a.flushed)
	w := bufio.NewWriter(a.opts.Conn)
	enc := event.NewEncoder(w)
	for e := range a.out {
		select {
		case a.room <- struct{}{}:
		default:
		}
		if err := enc.Encode(e); err != nil {
			continue
		}
		// Flush per event: latency matters more than syscalls here.
		if err := w.Flush(); err != nil {
			w.Reset(a.opts.Conn)
		}
	}
}

// readLoop decodes requests from the host. A virtio-serial port reads EOF
// while no host is connected, and the driver offers nothing to wait on
// for a connection, so the loop retries at a short interval then.
func (a *Agent) readLoop(ctx context.Context, reqs chan<- proto.Request) {
	br := bufio.NewReaderSize(a.opts.Conn, 64*1024)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			r, perr := proto.ParseRequest(line)
			if perr != nil {
				a.emit(event.New(event.Log, "", perr.Error()))
				continue
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
			continue
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
			a.emit(event.New(event.Log, "", "read host channel: "+err.Error()))
		}
		if errors.Is(err, os.ErrClosed) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (a *Agent) fail(name string, err error) error {
	a.emit(event.New(event.Failed, name, err.Error()))
	return err
}

// provision waits for the bake request, runs it, and slims the system.
func (a *Agent) provision(ctx context.Context, reqs <-chan proto.Request) error {
	var req proto.Request
	for {
		select {
		case <-ctx.Done():
			return a.fail("", fmt.Errorf("wait for provision request: %w", ctx.Err()))
		case req = <-reqs:
		}
		if req.Op == proto.OpProvision {
			break
		}
		a.emit(event.New(event.Log, "", fmt.Sprintf("ignoring %s request while waiting to provision", req.Op)))
	}
	// Before the services: they run the binaries chosen here.
	if err := a.optimize(ctx, req.Optimize); err != nil {
		return a.fail(proto.OptimizeStage, err)
	}
	if a.opts.Setup != nil {
		// No runtime config at build time: this writes the (empty) env
		// files the service units read.
		if _, err := a.opts.Setup(ctx); err != nil {
			return a.fail("setup", err)
		}
	}
	if err := a.loadImages(ctx, req.Images); err != nil {
		return a.fail(proto.LoadStage, err)
	}
	if err := a.createVolumes(ctx, req.Volumes); err != nil {
		return a.fail(proto.LoadStage, err)
	}
	if svcs := subset(a.opts.Config.Services, req.Services); len(svcs) > 0 {
		a.emit(event.New(event.StageStart, "services", "start services for the bake"))
		if err := a.startServices(ctx, svcs); err != nil {
			a.emit(event.New(event.StageFailed, "services", err.Error()))
			return a.fail(failedName(err), err)
		}
		a.emit(event.New(event.StageDone, "services", ""))
	}
	a.emit(event.New(event.StageStart, "bake", fmt.Sprintf("%d steps", len(req.Steps))))
	var acks <-chan string
	if req.AckSteps {
		acks = routeAcks(ctx, reqs, a)
	}
	for _, st := range req.Steps {
		if err := a.runStep(ctx, st, acks); err != nil {
			a.emit(event.New(event.StageFailed, "bake", err.Error()))
			return a.fail(st.Name, err)
		}
	}
	a.emit(event.New(event.StageDone, "bake", ""))

	a.emit(event.New(event.StageStart, "slim", "in the guest"))
	fields, err := a.slim(ctx, req.Slim, req.Prune)
	if err != nil {
		a.emit(event.New(event.StageFailed, "slim", err.Error()))
		return a.fail("slim", err)
	}
	done := event.New(event.StageDone, "slim", "")
	for k, v := range fields {
		done = done.With(k, v)
	}
	a.emit(done)
	a.emit(event.New(event.Done, "", "provisioned"))
	return nil
}

// routeAcks passes the host's OpAck IDs on while the bake runs; any other
// request is answered with a log line, as before the provision request.
func routeAcks(ctx context.Context, reqs <-chan proto.Request, a *Agent) <-chan string {
	acks := make(chan string, 16)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case r := <-reqs:
				if r.Op != proto.OpAck {
					a.emit(event.New(event.Log, "", fmt.Sprintf("ignoring %s request while provisioning", r.Op)))
					continue
				}
				select {
				case acks <- r.ID:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return acks
}

// serve starts the services and answers requests until a shutdown.
func (a *Agent) serve(ctx context.Context, reqs <-chan proto.Request) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.closeRelays()
	go func() {
		var rt proto.Runtime
		if a.opts.Setup != nil {
			var err error
			if rt, err = a.opts.Setup(ctx); err != nil {
				a.emit(event.New(event.Log, "", "runtime setup: "+err.Error()))
			}
		}
		if err := a.startServices(ctx, a.opts.Config.Services); err != nil {
			if ctx.Err() == nil {
				a.fail(failedName(err), err)
			}
			return
		}
		if len(rt.Ports) > 0 {
			a.relayPorts(ctx, cmp.Or(a.opts.RelayAddr, GuestAddr), rt.Ports)
		}
		a.emit(event.New(event.Ready, "", "all services healthy"))
		a.watch(ctx)
	}()
	for {
		var req proto.Request
		select {
		case <-ctx.Done():
			return ctx.Err()
		case req = <-reqs:
		}
		switch req.Op {
		case proto.OpStatus:
			a.replayStatus()
		case proto.OpLogs:
			a.sendJournal(ctx, req)
		case proto.OpExec:
			a.startExec(ctx, req)
		case proto.OpInput:
			a.execInput(req)
		case proto.OpResize:
			a.execResize(req)
		case proto.OpSignal:
			a.execSignal(req)
		case proto.OpResume:
			go a.resume(ctx, req)
		case proto.OpShutdown:
			cancel()
			a.stopServices(context.Background())
			a.emit(event.New(event.Done, "", "shutting down"))
			return nil
		default:
			a.emit(event.New(event.Log, "", fmt.Sprintf("ignoring %s request in run mode", req.Op)))
		}
	}
}

func (a *Agent) replayStatus() {
	a.mu.Lock()
	hello := a.status.Hello
	ready := a.status.Ready
	var evs []event.Event
	for _, s := range a.opts.Config.Services {
		if e, ok := a.replay[s.Name]; ok {
			evs = append(evs, e)
		}
	}
	a.mu.Unlock()
	if hello != nil {
		a.emit(*hello)
	}
	for _, e := range evs {
		a.emit(e)
	}
	if ready {
		a.emit(event.New(event.Ready, "", "all services healthy"))
	}
}

// subset returns the services named in names, in their start order, with
// dependencies on services outside the subset dropped.
func subset(all []proto.Service, names []string) []proto.Service {
	in := map[string]bool{}
	for _, n := range names {
		in[n] = true
	}
	var out []proto.Service
	for _, s := range all {
		if !in[s.Name] {
			continue
		}
		var after []string
		for _, d := range s.After {
			if in[d] {
				after = append(after, d)
			}
		}
		s.After = after
		out = append(out, s)
	}
	return out
}

func failedName(err error) string {
	var se *ServiceError
	if errors.As(err, &se) {
		return se.Service
	}
	return ""
}

// sendJournal answers OpLogs with the service's journal, one log event a
// line, the last marked "end" with the cursor after them. Every event
// carries the request's ID.
func (a *Agent) sendJournal(ctx context.Context, req proto.Request) {
	name := req.Service
	end := event.New(event.Log, name, "").With(proto.FieldEnd, "true").With(proto.FieldReq, req.ID)
	var unit string
	for _, s := range a.opts.Config.Services {
		if s.Name == name {
			unit = s.Unit
		}
	}
	switch {
	case unit == "":
		a.emit(end.With(proto.FieldError, fmt.Sprintf("no service %q", name)))
		return
	case a.opts.System == nil:
		a.emit(end.With(proto.FieldError, "no journal in this guest"))
		return
	}
	lines := req.Lines
	switch {
	case lines <= 0 && req.Cursor == "":
		lines = 200
	case lines <= 0 || lines > proto.MaxJournalLines:
		lines = proto.MaxJournalLines
	}
	jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, cursor, err := a.opts.System.JournalAfter(jctx, unit, req.Cursor, lines)
	for _, l := range out {
		a.emit(event.New(event.Log, name, l).With(proto.FieldReq, req.ID))
	}
	if err != nil {
		end = end.With(proto.FieldError, err.Error())
	}
	a.emit(end.With(proto.FieldCursor, cursor))
}
