// Command emu builds and runs local emulator images of backend stacks.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/emu-dev/emu/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
