package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// resume answers OpResume: the guest was restored from a saved state and
// runs again, on a new host connection. Its clock is stepped and its
// random pool reseeded before anything else; then the runtime config is
// applied (services that read a changed env restart) and every other
// service is probed again, since its time stood still while the host's
// did not. The answer reads like a boot's: hello, the services' health,
// ready, each carrying the request's ID.
func (a *Agent) resume(ctx context.Context, req proto.Request) {
	a.probing.Lock()
	defer a.probing.Unlock()
	var notes []string
	if !req.Time.IsZero() && a.opts.SetClock != nil {
		if err := a.opts.SetClock(req.Time); err != nil {
			notes = append(notes, err.Error())
		}
	}
	if len(req.Entropy) > 0 && a.opts.AddEntropy != nil {
		if err := a.opts.AddEntropy(req.Entropy); err != nil {
			notes = append(notes, err.Error())
		}
	}
	// After the clock, so its time is right.
	a.emit(a.hello("agent resumed").With(proto.FieldResumed, "true").With(proto.FieldReq, req.ID))
	for _, n := range notes {
		a.emit(event.New(event.Log, "", "resume: "+n).With(proto.FieldReq, req.ID))
	}

	var restart []proto.Service
	if req.Runtime != nil && a.opts.ApplyRuntime != nil {
		changed, err := a.opts.ApplyRuntime(ctx, *req.Runtime)
		if err != nil {
			a.emit(event.New(event.Failed, "", "resume: apply the runtime config: "+err.Error()).With(proto.FieldReq, req.ID))
			return
		}
		if changed {
			for _, s := range a.opts.Config.Services {
				if s.RuntimeEnv {
					restart = append(restart, s)
				}
			}
		}
	}
	restarting := map[string]bool{}
	var names []string
	for _, s := range restart {
		restarting[s.Name] = true
		names = append(names, s.Name)
	}

	// Probe the others while the changed ones restart: both take time
	// the user waits.
	var wg sync.WaitGroup
	errc := make(chan error, len(a.opts.Config.Services)+1)
	for _, s := range a.opts.Config.Services {
		if restarting[s.Name] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.awaitHealthy(ctx, s); err != nil {
				errc <- err
			}
		}()
	}
	if len(restart) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.restartServices(ctx, restart, names); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		if ctx.Err() == nil {
			a.emit(event.New(event.Failed, failedName(err), err.Error()).With(proto.FieldReq, req.ID))
		}
		return
	}
	ready := event.New(event.Ready, "", "all services healthy").With(proto.FieldReq, req.ID)
	if len(names) > 0 {
		ready = ready.With(proto.FieldRestarted, strings.Join(names, ","))
	}
	a.emit(ready)
}

// restartServices stops svcs in reverse order, then starts them as a boot
// does; their dependencies outside svcs are running already.
func (a *Agent) restartServices(ctx context.Context, svcs []proto.Service, names []string) error {
	if a.opts.System == nil {
		return fmt.Errorf("restart %s: no init system in this guest", strings.Join(names, ", "))
	}
	for i := len(svcs) - 1; i >= 0; i-- {
		if err := a.opts.System.Stop(ctx, svcs[i].Unit); err != nil {
			a.emit(event.New(event.Log, svcs[i].Name, "stop for the new runtime env: "+err.Error()))
		}
	}
	return a.startServices(ctx, subset(svcs, names))
}
