package machine

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
)

func portOf(t *testing.T, addr net.Addr) int { return addr.(*net.TCPAddr).Port }

// What QEMU's forward does when nothing in the guest answers: accept on
// the host, then close.
func closingListener(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return portOf(t, ln.Addr())
}

// quietListener accepts and keeps connections open, as a database does
// until the client speaks.
func quietListener(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return portOf(t, ln.Addr())
}

func TestCheckReachable(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer ok.Close()
	httpPort := portOf(t, ok.Listener.Addr())
	man := bundle.Manifest{Services: []bundle.ServiceRecord{
		{Name: "api", Health: spec.Health{HTTP: &spec.HTTPHealth{Port: 8080, Path: "/health"}}},
		{Name: "db", Health: spec.Health{TCP: 5432}},
		{Name: "cache", Health: spec.Health{TCP: 6379}},
	}}
	good := []proto.Forward{
		{Service: "api", Name: "http", Guest: 8080, Host: httpPort},
		{Service: "db", Name: "sql", Guest: 5432, Host: quietListener(t)},
	}
	if err := CheckReachable(context.Background(), "up", man, good, nil); err != nil {
		t.Errorf("reachable forwards: %v", err)
	}
	closed := closingListener(t)
	found := map[string]string{"cache.resp": "nothing listens on guest port 6379"}
	err := CheckReachable(context.Background(), "up", man, append(good, proto.Forward{Service: "cache", Name: "resp", Guest: 6379, Host: closed}), found)
	ge := AsGuestError(err)
	if ge == nil || ge.Service != "cache" || ge.Hint == "" {
		t.Fatalf("error = %v, want a guest error naming cache with a hint", err)
	}
	for _, want := range []string{"port resp (127.0.0.1:" + strconv.Itoa(closed) + " -> guest port 6379) does not answer from the host: nothing listens on guest port 6379",
		"closed at once"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// An http health check's port gets the same request through the host.
	man.Services[0].Health.HTTP.Path = "/nope"
	if err := CheckReachable(context.Background(), "up", man, good[:1], nil); err == nil || !strings.Contains(err.Error(), "status 404, want 200") {
		t.Errorf("http port answering 404: %v", err)
	}
}
