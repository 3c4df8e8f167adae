// Command demo-api is the demo stack's HTTP API: it serves items stored in
// PostgreSQL, checks Valkey, and migrates and seeds its own database.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/emu-dev/emu/examples/demo/internal/app"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	if os.Getenv("NO_SIGNAL_HANDLER") == "1" {
		// For tests of stopping: behave like the many programs that
		// install no handler. As a container's PID 1 without an init,
		// such a program does not die of SIGTERM.
		stop()
		ctx, stop = context.Background(), func() {}
	}
	code := app.Main(ctx, version, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
