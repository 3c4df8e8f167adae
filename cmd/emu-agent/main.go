//go:build linux

// Command emu-agent is emu's guest agent. See internal/agent.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/agent"
	"github.com/emu-dev/emu/internal/proto"
)

var version = "dev"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println("emu-agent", version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "emu-agent: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	cfg, err := agent.LoadConfig(proto.ConfigPath)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	dev, err := agent.WaitPort(wctx, proto.PortName)
	cancel()
	if err != nil {
		return err
	}
	port, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open host channel: %w", err)
	}
	defer port.Close()
	opts := agent.Options{
		Config:   cfg,
		Mode:     proto.Mode(cmdlineParam("emu.mode", string(proto.Run))),
		Conn:     port,
		Console:  os.Stderr,
		PowerOff: agent.PowerOff,
		Version:  version,
		// A resume steps the clock and reseeds the random pool in any
		// guest; the runtime env exists only where services read it.
		SetClock:   agent.SetClock,
		AddEntropy: agent.AddEntropy,
		Redirect:   (&agent.NAT{Iface: "eth0", Addr: agent.GuestAddr}).Redirect,
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		opts.System = agent.Systemd{}
		opts.Setup = agent.SetupRuntime
		opts.ApplyRuntime = agent.ApplyRuntime
	}
	if _, err := os.Stat(proto.PodmanPath); err == nil {
		opts.Engine = agent.Podman{}
	}
	return agent.Start(ctx, opts)
}

// cmdlineParam returns key's value on the kernel command line, or def.
func cmdlineParam(key, def string) string {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return def
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return def
}
