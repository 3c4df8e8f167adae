package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// System is the guest's init system, as the agent needs it.
type System interface {
	Start(ctx context.Context, unit string) error
	Stop(ctx context.Context, unit string) error
	// Failed reports whether the unit has entered a failed state.
	Failed(ctx context.Context, unit string) bool
	// Journal returns the unit's last lines of log.
	Journal(ctx context.Context, unit string, lines int) string
	// JournalAfter returns the unit's log lines after cursor ("": its last
	// lines), at most lines of them, and the cursor after the last one
	// (cursor itself when there is none).
	JournalAfter(ctx context.Context, unit, cursor string, lines int) ([]string, string, error)
}

// Systemd drives systemd through systemctl and journalctl.
type Systemd struct{}

func (Systemd) Start(ctx context.Context, unit string) error {
	return run(ctx, "systemctl", "start", "--no-block", unit)
}

func (Systemd) Stop(ctx context.Context, unit string) error {
	return run(ctx, "systemctl", "stop", unit)
}

func (Systemd) Failed(ctx context.Context, unit string) bool {
	return exec.CommandContext(ctx, "systemctl", "is-failed", "--quiet", unit).Run() == nil
}

func (Systemd) Journal(ctx context.Context, unit string, lines int) string {
	out, _ := exec.CommandContext(ctx, "journalctl", "-u", unit, "-n", strconv.Itoa(lines), "--no-pager", "-o", "short-monotonic").CombinedOutput()
	return strings.TrimSpace(string(out))
}

func (Systemd) JournalAfter(ctx context.Context, unit, cursor string, lines int) ([]string, string, error) {
	args := []string{"-u", unit, "-n", strconv.Itoa(lines), "--no-pager", "-q", "-o", "short-monotonic", "--show-cursor"}
	if cursor != "" {
		args = append(args, "--after-cursor", cursor)
	}
	out, err := exec.CommandContext(ctx, "journalctl", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, cursor, fmt.Errorf("journalctl -u %s: %w", unit, err)
	}
	l, next := splitCursor(string(out), cursor)
	return l, next, nil
}

// splitCursor splits journalctl --show-cursor output into its log lines and
// the cursor line that ends it; with no entries there is no cursor line, and
// the cursor stays prev.
func splitCursor(out, prev string) ([]string, string) {
	out = strings.TrimRight(out, "\n")
	if out == "" {
		return nil, prev
	}
	lines := strings.Split(out, "\n")
	if c, ok := strings.CutPrefix(lines[len(lines)-1], "-- cursor: "); ok {
		return lines[:len(lines)-1], c
	}
	return lines, prev
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ServiceError is a service that did not become healthy.
type ServiceError struct {
	Service string
	Probe   string // the last probe's result
	Journal string
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("service %s did not become healthy: %s", e.Service, e.Probe)
}

// startServices starts every service once its dependencies are healthy,
// independent ones side by side, and returns when all are healthy or the
// first one fails.
func (a *Agent) startServices(ctx context.Context, svcs []proto.Service) error {
	if len(svcs) == 0 {
		return nil
	}
	if a.opts.System == nil {
		return errors.New("start services: no init system in this guest")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	healthy := make(map[string]chan struct{}, len(svcs))
	for _, s := range svcs {
		healthy[s.Name] = make(chan struct{})
	}
	errc := make(chan error, len(svcs))
	var wg sync.WaitGroup
	for _, s := range svcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, dep := range s.After {
				select {
				case <-healthy[dep]:
				case <-ctx.Done():
					return
				}
			}
			if err := a.startOne(ctx, s); err != nil {
				errc <- err
				cancel()
				return
			}
			close(healthy[s.Name])
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	return ctx.Err()
}

func (a *Agent) startOne(ctx context.Context, s proto.Service) error {
	a.emit(event.New(event.ServiceStarting, s.Name, s.Unit))
	if err := a.opts.System.Start(ctx, s.Unit); err != nil {
		return a.unhealthy(ctx, s, err.Error())
	}
	return a.awaitHealthy(ctx, s)
}

// awaitHealthy probes s until it passes (a service.healthy event), its
// unit fails or its health timeout runs out (service.unhealthy, and a
// *ServiceError).
func (a *Agent) awaitHealthy(ctx context.Context, s proto.Service) error {
	timeout := s.Health.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	backoff := 50 * time.Millisecond
	var last string
	for {
		err := probe(pctx, s.Health)
		if err == nil {
			a.emit(healthEvent(event.ServiceHealthy, s, "ok"))
			return nil
		}
		// A probe cut short by the overall timeout says only that; the
		// one before it says why the service is not healthy.
		if pctx.Err() == nil || last == "" {
			last = err.Error()
		}
		if a.opts.System.Failed(pctx, s.Unit) {
			return a.unhealthy(ctx, s, "unit "+s.Unit+" failed; last probe: "+last)
		}
		select {
		case <-pctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return a.unhealthy(ctx, s, fmt.Sprintf("no success within %s; last probe: %s", timeout, last))
		case <-time.After(backoff):
		}
		// Capped low: a probe is cheap, and every step of backoff is time
		// the user waits after the service is already up.
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

func (a *Agent) unhealthy(ctx context.Context, s proto.Service, why string) error {
	jctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	journal := a.opts.System.Journal(jctx, s.Unit, 20)
	e := healthEvent(event.ServiceUnhealthy, s, why)
	if journal != "" {
		e = e.With(proto.FieldJournal, journal)
	}
	a.emit(e)
	return &ServiceError{Service: s.Name, Probe: why, Journal: journal}
}

func healthEvent(kind event.Kind, s proto.Service, msg string) event.Event {
	e := event.New(kind, s.Name, msg)
	if len(s.Ports) > 0 {
		e = e.With(proto.FieldPorts, strings.Join(s.Ports, ","))
	}
	return e
}

// watch re-probes healthy services and reports changes until ctx ends.
func (a *Agent) watch(ctx context.Context) {
	tick := time.NewTicker(cmp.Or(a.opts.WatchInterval, 5*time.Second))
	defer tick.Stop()
	up := map[string]bool{}
	for _, s := range a.opts.Config.Services {
		up[s.Name] = true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !a.watchRound(ctx, up) {
			return
		}
	}
}

// watchRound probes every service once and reports the changes; false when
// ctx ended. A resume probes and restarts the services itself: a round is
// skipped while one runs, since it would report a service being restarted
// as unhealthy.
func (a *Agent) watchRound(ctx context.Context, up map[string]bool) bool {
	if !a.probing.TryLock() {
		return true
	}
	defer a.probing.Unlock()
	for _, s := range a.opts.Config.Services {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout(s.Health)+time.Second)
		err := probe(pctx, s.Health)
		cancel()
		if ctx.Err() != nil {
			return false
		}
		switch {
		case err == nil && !up[s.Name]:
			up[s.Name] = true
			a.emit(healthEvent(event.ServiceHealthy, s, "ok"))
		case err != nil && up[s.Name]:
			up[s.Name] = false
			a.emit(healthEvent(event.ServiceUnhealthy, s, err.Error()))
		}
	}
	return true
}

// stopServices stops services in reverse start order.
func (a *Agent) stopServices(ctx context.Context) {
	if a.opts.System == nil {
		return
	}
	svcs := a.opts.Config.Services
	for i := len(svcs) - 1; i >= 0; i-- {
		sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		start := time.Now()
		if err := a.opts.System.Stop(sctx, svcs[i].Unit); err != nil {
			a.emit(event.New(event.Log, svcs[i].Name, err.Error()))
		} else if a.opts.Console != nil {
			// On the console (serial.log, the journal): how long each
			// stop took is what to read when a down is slow.
			fmt.Fprintf(a.opts.Console, "emu-agent: service %s stopped in %s\n", svcs[i].Name, time.Since(start).Round(time.Millisecond))
		}
		cancel()
	}
}

// probeTimeout bounds one probe: a connection or a request 2 s; a command
// 10 s, since a command may start a runtime (`podman exec` takes seconds
// under TCG).
func probeTimeout(h proto.Health) time.Duration {
	if len(h.Exec) > 0 {
		return execProbeTimeout
	}
	return 2 * time.Second
}

// execProbeTimeout is a variable for the tests.
var execProbeTimeout = 10 * time.Second

// probe runs one health check once.
func probe(ctx context.Context, h proto.Health) error {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout(h))
	defer cancel()
	switch {
	case h.TCP > 0:
		// 127.0.0.1, then ::1: a service may listen on either loopback
		// only (or on all addresses, which both reach).
		var d net.Dialer
		var errs []error
		for _, ip := range loopbacks {
			c, err := d.DialContext(pctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(h.TCP)))
			if err == nil {
				return c.Close()
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	case h.HTTPPort > 0:
		url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(h.HTTPPort)) + h.HTTPPath
		req, err := http.NewRequestWithContext(pctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		want := h.HTTPStatus
		if want == 0 {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			return fmt.Errorf("GET %s: status %d, want %d", url, resp.StatusCode, want)
		}
		return nil
	case len(h.Exec) > 0:
		out, err := exec.CommandContext(pctx, h.Exec[0], h.Exec[1:]...).CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if len(msg) > 200 {
				msg = msg[len(msg)-200:]
			}
			return fmt.Errorf("%s: %w: %s", strings.Join(h.Exec, " "), err, msg)
		}
		return nil
	}
	return errors.New("no health check")
}
