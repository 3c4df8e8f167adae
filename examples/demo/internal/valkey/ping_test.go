package valkey

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeServer answers one connection: it reads the PING and writes reply.
// An empty reply means it never answers.
func fakeServer(t *testing.T, reply string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		var got strings.Builder
		for range 3 { // *1, $4, PING
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			got.WriteString(line)
		}
		if got.String() != "*1\r\n$4\r\nPING\r\n" {
			conn.Write([]byte("-ERR bad request\r\n"))
			return
		}
		if reply == "" {
			time.Sleep(time.Second)
			return
		}
		conn.Write([]byte(reply))
	}()
	return ln.Addr().String()
}

func TestPing(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		addr    func(t *testing.T) string
		wantErr string // "" means success
	}{
		{name: "pong", addr: func(t *testing.T) string { return fakeServer(t, "+PONG\r\n") }},
		{name: "auth required", addr: func(t *testing.T) string {
			return fakeServer(t, "-NOAUTH Authentication required.\r\n")
		}, wantErr: "server error: NOAUTH"},
		{name: "unexpected reply", addr: func(t *testing.T) string { return fakeServer(t, "$4\r\nPONG\r\n") },
			wantErr: "unexpected reply"},
		{name: "no reply", addr: func(t *testing.T) string { return fakeServer(t, "") }, wantErr: "timeout"},
		{name: "refused", addr: func(*testing.T) string { return closedAddr }, wantErr: "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err := Pinger{Addr: tt.addr(t)}.Ping(ctx)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Ping: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Ping error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
