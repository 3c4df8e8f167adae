package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/proto"
)

// reachTries and reachGap: a forward that fails is tried again a few
// times before it counts as unreachable (QEMU's forward or the agent's
// relay may take a moment after ready).
const (
	reachTries = 5
	reachGap   = 300 * time.Millisecond
	// quietFor: a connection still open this long after it was accepted
	// reached a listener (QEMU closes one the guest refused within
	// milliseconds).
	quietFor = 250 * time.Millisecond
)

// CheckReachable proves each forward answers from the host, as a client
// of the developer's would reach it: a service healthy inside the guest
// but listening where the forward does not arrive is not ready. A port a
// service's http health check uses gets the same request through the
// host port; any other port a TCP connection that QEMU's forward does
// not close at once (it accepts on the host, then closes when nothing
// answers in the guest).
// op names the check in its errors ("up", "verify"); found is what the
// agent found at each guest port (event.Status.Ports), said in an error.
func CheckReachable(ctx context.Context, op string, man bundle.Manifest, ports []proto.Forward, found map[string]string) error {
	// In parallel: a quiet port costs its read deadline, and a stack has
	// several.
	errs := make([]error, len(ports))
	var wg sync.WaitGroup
	for i, f := range ports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			for try := 0; try < reachTries; try++ {
				if err = probeForward(ctx, man, f); err == nil || ctx.Err() != nil {
					break
				}
				t := time.NewTimer(reachGap)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
			if err != nil {
				ge := &GuestError{Op: op, Service: f.Service,
					Err: fmt.Errorf("port %s (%s -> guest port %d) does not answer from the host: %w", f.Name, f.URL(), f.Guest, err),
					Hint: "the service is healthy inside the guest but not where the forward arrives: the agent's notes above say " +
						"what listens on the guest port (it relays a service on 127.0.0.1 or ::1 by itself)"}
				if why := found[f.Key()]; why != "" {
					ge.Err = fmt.Errorf("port %s (%s -> guest port %d) does not answer from the host: %s (%w)", f.Name, f.URL(), f.Guest, why, err)
					ge.Hint = "the service is healthy inside the guest but not where the forward arrives: check the port it " +
						"listens on against the stack file's ports (emu relays a service on 127.0.0.1 or ::1 by itself)"
				}
				errs[i] = ge
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func probeForward(ctx context.Context, man bundle.Manifest, f proto.Forward) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, s := range man.Services {
		if s.Name == f.Service && s.Health.HTTP != nil && s.Health.HTTP.Port == f.Guest {
			return probeHTTP(ctx, "http://"+f.URL()+s.Health.HTTP.Path, s.Health.HTTP.Status)
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", f.URL())
	if err != nil {
		return err
	}
	defer c.Close()
	// Open and quiet (most servers wait for the client), or a greeting
	// (SMTP, MySQL): reachable. Closed at once: nothing answered in the
	// guest.
	c.SetReadDeadline(time.Now().Add(quietFor))
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	if errors.Is(err, io.EOF) {
		return errors.New("the connection was closed at once: nothing in the guest accepted it")
	}
	return err
}

func probeHTTP(ctx context.Context, url string, want int) error {
	if want == 0 {
		want = http.StatusOK
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return errors.New("GET " + url + ": status " + strconv.Itoa(resp.StatusCode) + ", want " + strconv.Itoa(want))
	}
	return nil
}
