package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// GuestAddr is the guest's address on QEMU's user-mode network: where the
// host's port forwards arrive.
const GuestAddr = "10.0.2.15"

// loopbacks are where a service that listens "on localhost" listens.
var loopbacks = []string{"127.0.0.1", "::1"}

// relayPorts makes every forwarded port reachable from the host. A port
// some socket holds on the guest's address (a service listening on all
// addresses, the usual case) keeps the direct path. A port free there but
// held on the loopback (PostgreSQL, Valkey, MariaDB as Debian ships them)
// gets a path to it: on 127.0.0.1 a NAT rule in the guest's kernel
// (Options.Redirect) where it can, else, and on ::1, a relay: the agent
// listens on addr:port and splices each connection to the loopback
// listener. A port nobody listens on is reported, and the host's
// reachability check names it.
//
// It runs once every service is healthy, so their listeners are up. A
// service restarted later keeps its listener and so its relay.
func (a *Agent) relayPorts(ctx context.Context, addr string, ports []proto.Forward) {
	for _, p := range ports {
		port := strconv.Itoa(p.Guest)
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, port))
		if errors.Is(err, syscall.EADDRINUSE) {
			continue // direct: the service listens on the guest's address
		}
		note := func(reach, more string) {
			a.emit(event.New(event.Log, p.Service, "port "+p.Name+": "+reach+more).
				With(event.FieldPort, p.Name).With(event.FieldReach, reach))
		}
		if err != nil {
			note(fmt.Sprintf("cannot check guest port %s: %v", port, err), "")
			continue
		}
		target := loopbackListener(ctx, port)
		if target == "" {
			ln.Close()
			note("nothing listens on guest port "+port, "")
			continue
		}
		if a.opts.Redirect != nil && target == net.JoinHostPort("127.0.0.1", port) {
			err := a.opts.Redirect(p.Guest)
			if err == nil {
				ln.Close()
				note(fmt.Sprintf("guest port %s listens on %s only", port, target), ": the kernel forwards to it (NAT)")
				continue
			}
			a.emit(event.New(event.Log, p.Service, fmt.Sprintf("port %s: %v: relaying instead", p.Name, err)))
		}
		if !a.keepRelay(ln) {
			return // the agent is ending
		}
		note(fmt.Sprintf("guest port %s listens on %s only", port, target), ": relaying "+net.JoinHostPort(addr, port)+" to it")
		go relay(ctx, ln, target)
	}
}

// keepRelay records ln, to be closed when the agent stops serving; after
// that it closes ln at once and says no.
func (a *Agent) keepRelay(ln net.Listener) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.relaysClosed {
		ln.Close()
		return false
	}
	a.relays = append(a.relays, ln)
	return true
}

// closeRelays closes every relay's listener, before serve returns.
func (a *Agent) closeRelays() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.relaysClosed = true
	for _, ln := range a.relays {
		ln.Close()
	}
	a.relays = nil
}

// loopbackListener is the loopback address:port something listens on, or
// "".
func loopbackListener(ctx context.Context, port string) string {
	for _, ip := range loopbacks {
		target := net.JoinHostPort(ip, port)
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", target)
		if err == nil {
			c.Close()
			return target
		}
	}
	return ""
}

// relay accepts on ln until ctx ends and splices each connection to
// target (on Linux, io.Copy between TCP connections uses splice(2)).
func relay(ctx context.Context, ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go splice(ctx, c, target)
	}
}

// splice copies both ways between c and a new connection to target,
// passing each side's end of stream on as a half-close.
func splice(ctx context.Context, c net.Conn, target string) {
	defer c.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	t, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return
	}
	defer t.Close()
	var wg sync.WaitGroup
	copyHalf := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}
	wg.Add(2)
	go copyHalf(t, c)
	go copyHalf(c, t)
	wg.Wait()
}
