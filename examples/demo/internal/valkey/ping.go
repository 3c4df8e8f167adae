// Package valkey checks that a Valkey (or Redis) server answers PING.
// It speaks just enough RESP for that, to keep the binary small.
package valkey

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
)

// Pinger pings the server at Addr (host:port) on a fresh connection each time.
type Pinger struct {
	Addr string
}

// Ping sends PING and expects +PONG; the context bounds dial, write and read.
func (p Pinger) Ping(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return fmt.Errorf("valkey ping: %w", err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return fmt.Errorf("valkey ping: %w", err)
		}
	}
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return fmt.Errorf("valkey ping: %w", err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("valkey ping: reading reply: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case line == "+PONG":
		return nil
	case strings.HasPrefix(line, "-"):
		return fmt.Errorf("valkey ping: server error: %s", line[1:])
	default:
		return fmt.Errorf("valkey ping: unexpected reply %q", line)
	}
}
