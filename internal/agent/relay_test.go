package agent

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/vmtest"
)

// echo serves on ln: each connection gets back what it sent, prefixed.
func echo(t *testing.T, ln net.Listener, prefix string) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(append([]byte(prefix), b...))
			}()
		}
	}()
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ask sends msg to addr, half-closes, and returns the whole answer.
func ask(t *testing.T, addr, msg string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(msg))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// Here 127.0.0.2 plays the guest's address and 127.0.0.1 its loopback: a
// service on the loopback only is relayed, one on all addresses keeps the
// direct path, and a port nobody listens on is reported.
func TestRelayLoopbackListeners(t *testing.T) {
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		t.Skipf("no 127.0.0.2 on this host: %v", err)
	} else {
		ln.Close()
	}
	loopOnly, all, none := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	ln1, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(loopOnly))
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln1, "loopback:")
	ln2, err := net.Listen("tcp", ":"+strconv.Itoa(all))
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln2, "all:")

	rt := proto.Runtime{Ports: []proto.Forward{
		{Service: "db", Name: "sql", Guest: loopOnly, Host: 1},
		{Service: "api", Name: "http", Guest: all, Host: 2},
		{Service: "cache", Name: "resp", Guest: none, Host: 3},
	}}
	h := startAgent(t, Options{
		Mode:      proto.Run,
		Setup:     func(context.Context) (proto.Runtime, error) { return rt, nil },
		RelayAddr: "127.0.0.2",
	})
	h.next(event.Ready, "")
	var notes []string
	for _, e := range h.got {
		if e.Kind == event.Log {
			notes = append(notes, e.Name+": "+e.Msg)
		}
	}
	joined := strings.Join(notes, "\n")
	for _, want := range []string{
		"db: port sql: guest port " + strconv.Itoa(loopOnly) + " listens on 127.0.0.1:" + strconv.Itoa(loopOnly) + " only: relaying",
		"cache: port resp: nothing listens on guest port " + strconv.Itoa(none),
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("agent notes lack %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "api:") {
		t.Errorf("the all-addresses service got a note, want the direct path:\n%s", joined)
	}
	if got, err := ask(t, "127.0.0.2:"+strconv.Itoa(loopOnly), "hello"); err != nil || got != "loopback:hello" {
		t.Errorf("through the relay: %q, %v", got, err)
	}
	if got, err := ask(t, "127.0.0.2:"+strconv.Itoa(all), "hello"); err != nil || got != "all:hello" {
		t.Errorf("direct: %q, %v", got, err)
	}
	if _, err := ask(t, "127.0.0.2:"+strconv.Itoa(none), "hello"); err == nil {
		t.Errorf("a port nobody listens on answered")
	}
	// Big transfers keep their order and end (half-close both ways).
	big := strings.Repeat("0123456789", 100000)
	if got, err := ask(t, "127.0.0.2:"+strconv.Itoa(loopOnly), big); err != nil || got != "loopback:"+big {
		t.Errorf("1 MB through the relay: %d bytes back, %v", len(got), err)
	}
	// The agent's end closes the relay.
	h.cancel()
	h.result()
	if _, err := ask(t, "127.0.0.2:"+strconv.Itoa(loopOnly), "x"); err == nil {
		t.Errorf("the relay still accepts after the agent ended")
	}
}

// BenchmarkRelay compares a loopback-only listener reached through the
// relay with an all-addresses listener reached directly, in one run: the
// median and p99 of 1000 small round trips on one connection, and a
// 100 MB transfer. The QEMU forward in front of both is the same and not
// part of it; this is the relay's own cost.
//
//	go test -run '^$' -bench Relay -benchtime 1x ./internal/agent/
func BenchmarkRelay(b *testing.B) {
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		b.Skipf("no 127.0.0.2 on this host: %v", err)
	} else {
		ln.Close()
	}
	serve := func(addr string) (net.Listener, int) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }() // echo
			}
		}()
		return ln, ln.Addr().(*net.TCPAddr).Port
	}
	lnLoop, loopPort := serve("127.0.0.1:0")
	defer lnLoop.Close()
	lnAll, allPort := serve("127.0.0.2:0") // "all addresses": reached on the guest address itself
	defer lnAll.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := newAgent(Options{})
	a.relayPorts(ctx, "127.0.0.2", []proto.Forward{{Service: "db", Name: "sql", Guest: loopPort}})
	defer a.closeRelays()

	measure := func(addr string) vmtest.EchoResult {
		r, err := vmtest.MeasureEcho(addr, 1000, 100<<20)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	var direct, relayed vmtest.EchoResult
	for b.Loop() {
		direct = measure("127.0.0.2:" + strconv.Itoa(allPort))
		relayed = measure("127.0.0.2:" + strconv.Itoa(loopPort))
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(direct.P50), "direct-p50-us")
	b.ReportMetric(us(relayed.P50), "relay-p50-us")
	b.ReportMetric(us(direct.P99), "direct-p99-us")
	b.ReportMetric(us(relayed.P99), "relay-p99-us")
	b.ReportMetric(direct.MBps, "direct-MB/s")
	b.ReportMetric(relayed.MBps, "relay-MB/s")
	b.ReportMetric(us(relayed.P50)/us(direct.P50), "p50-ratio")
	b.ReportMetric(direct.MBps/relayed.MBps, "throughput-ratio")
}
