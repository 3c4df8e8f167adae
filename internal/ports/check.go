package ports

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/emu-dev/emu/internal/proto"
)

// Holder is the process that holds a host port.
type Holder struct {
	PID     int
	Command string
}

// InUseError reports a host port something else already holds.
type InUseError struct {
	Forward proto.Forward
	// Holder is who holds the port, when it could be found; HolderErr says
	// why not otherwise.
	Holder    *Holder
	HolderErr error
	// Err is the error from listening on the port.
	Err error
}

func (e *InUseError) Error() string {
	msg := fmt.Sprintf("port 127.0.0.1:%d for %s is already in use", e.Forward.Host, e.Forward.Label())
	switch {
	case e.Holder != nil:
		return fmt.Sprintf("%s by pid %d (%s)", msg, e.Holder.PID, e.Holder.Command)
	case e.HolderErr != nil:
		return fmt.Sprintf("%s (the holder could not be found: %v)", msg, e.HolderErr)
	}
	return msg
}

func (e *InUseError) Unwrap() error { return e.Err }

// HintText says how to get past the error.
func (e *InUseError) HintText() string {
	return "stop it, or pick another port: emu up --port " + e.Forward.Key() + "=PORT"
}

// Check listens on 127.0.0.1:Host for each forward, closing at once, and
// reports every port it cannot have: an *InUseError for each taken one,
// naming its holder where FindHolder can, joined with errors.Join.
func Check(forwards []proto.Forward) error {
	var errs []error
	for _, f := range forwards {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(f.Host))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			continue
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			errs = append(errs, fmt.Errorf("check port %s for %s: %w", addr, f.Label(), err))
			continue
		}
		h, herr := FindHolder(f.Host)
		errs = append(errs, &InUseError{Forward: f, Holder: h, HolderErr: herr, Err: err})
	}
	return errors.Join(errs...)
}
