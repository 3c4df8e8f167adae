// Package app is the demo-api command line: serve, migrate, seed, version.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/emu-dev/emu/examples/demo/internal/api"
	"github.com/emu-dev/emu/examples/demo/internal/store"
	"github.com/emu-dev/emu/examples/demo/internal/valkey"
)

// Defaults for the environment variables.
const (
	DefaultDatabaseURL = "postgres://demo:demo@127.0.0.1:5432/demo?sslmode=disable"
	DefaultValkeyAddr  = "127.0.0.1:6379"
	DefaultAddr        = ":8080"
)

const usage = `usage: demo-api <command> [flags]

commands:
  serve [--addr ADDR]   serve the HTTP API (GET /health, GET /items, POST /items;
                        GET /starts with DATA_DIR)
  migrate [--wait D]    apply the embedded SQL migrations not yet applied
  seed [--wait D]       insert the seed items that are not yet present
  version               print the version (also: --version)

environment:
  DATABASE_URL   PostgreSQL URL (default ` + DefaultDatabaseURL + `)
  VALKEY_ADDR    Valkey host:port (default ` + DefaultValkeyAddr + `)
  ADDR           listen address for serve (default ` + DefaultAddr + `)
  DATA_DIR       optional: serve counts its starts in DATA_DIR/starts (GET /starts);
                 seed leaves a note there (DATA_DIR/seeded), which GET /starts shows
  ALLOW_EXIT     1 enables POST /exit: serve then exits with an error (for restart policies)
`

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// errUsage marks an error whose message is followed by the usage text.
var errUsage = errors.New("usage")

// Config is the environment the commands read.
type Config struct {
	DatabaseURL string
	ValkeyAddr  string
	Addr        string
	DataDir     string
	// AllowExit enables POST /exit, which makes serve fail: to see a
	// restart policy at work.
	AllowExit bool
}

// ConfigFromEnv reads the configuration through getenv, applying defaults.
func ConfigFromEnv(getenv func(string) string) Config {
	or := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	return Config{
		DatabaseURL: or("DATABASE_URL", DefaultDatabaseURL),
		ValkeyAddr:  or("VALKEY_ADDR", DefaultValkeyAddr),
		Addr:        or("ADDR", DefaultAddr),
		DataDir:     getenv("DATA_DIR"),
		AllowExit:   getenv("ALLOW_EXIT") == "1",
	}
}

// Main runs the command in args and returns the process exit code.
func Main(ctx context.Context, version string, args []string, stdout, stderr io.Writer) int {
	err := run(ctx, version, ConfigFromEnv(os.Getenv), args, stdout, stderr)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "demo-api: %v\n\n%s", err, usage)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "demo-api: %v\n", err)
		return exitError
	}
}

func run(ctx context.Context, version string, cfg Config, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("no command given: %w", errUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "version", "--version", "-version", "-v":
		fmt.Fprintf(stdout, "demo-api %s (%s)\n", version, runtime.Version())
		return nil
	case "help", "-h", "-help", "--help":
		return flag.ErrHelp
	case "serve":
		fs := newFlagSet(cmd)
		fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "listen address (env ADDR)")
		if err := parse(fs, rest); err != nil {
			return err
		}
		return serve(ctx, cfg, stderr)
	case "migrate", "seed":
		fs := newFlagSet(cmd)
		wait := fs.Duration("wait", 30*time.Second, "how long to wait for PostgreSQL to answer")
		if err := parse(fs, rest); err != nil {
			return err
		}
		if cmd == "migrate" {
			return migrate(ctx, cfg, *wait, stdout)
		}
		return seed(ctx, cfg, *wait, stdout)
	default:
		return fmt.Errorf("unknown command %q: %w", cmd, errUsage)
	}
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // Main prints errors and usage itself
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%s: %v: %w", fs.Name(), err, errUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q: %w", fs.Name(), fs.Arg(0), errUsage)
	}
	return nil
}

func serve(ctx context.Context, cfg Config, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	st, err := store.Open(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer st.Close()

	mux := http.NewServeMux()
	mux.Handle("/", api.New(st, valkey.Pinger{Addr: cfg.ValkeyAddr}, log))
	if cfg.DataDir != "" {
		// A file on disk, to show where data lives: in a container, a named
		// volume keeps it across restarts.
		n, err := countStart(cfg.DataDir)
		if err != nil {
			return err
		}
		seeded, _ := os.ReadFile(filepath.Join(cfg.DataDir, "seeded"))
		log.Info("start counted", "starts", n, "dir", cfg.DataDir)
		mux.HandleFunc("GET /starts", func(w http.ResponseWriter, _ *http.Request) {
			writeJSONBody(w, map[string]any{"starts": n, "seeded": strings.TrimSpace(string(seeded))})
		})
	}
	exit := make(chan struct{}, 1)
	if cfg.AllowExit {
		mux.HandleFunc("POST /exit", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusAccepted)
			select {
			case exit <- struct{}{}:
			default:
			}
		})
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "valkey", cfg.ValkeyAddr)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-exit:
		log.Warn("exiting on request (POST /exit)")
		time.Sleep(100 * time.Millisecond) // the 202 goes out first
		return errors.New("exit requested (POST /exit)")
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

func writeJSONBody(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// countStart adds one to the number in dir/starts, written to a temporary
// name and renamed, and returns it.
func countStart(dir string) (int, error) {
	path := filepath.Join(dir, "starts")
	n := 0
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if n, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return 0, fmt.Errorf("read %s: %w", path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	n++
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(n)+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("count start: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("count start: %w", err)
	}
	return n, nil
}

func openReady(ctx context.Context, cfg Config, wait time.Duration) (*store.Store, error) {
	st, err := store.Open(cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	if err := st.WaitReady(ctx, wait); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func migrate(ctx context.Context, cfg Config, wait time.Duration, stdout io.Writer) error {
	ms, err := store.Migrations()
	if err != nil {
		return err
	}
	st, err := openReady(ctx, cfg, wait)
	if err != nil {
		return err
	}
	defer st.Close()
	n, err := st.Migrate(ctx, ms, func(m store.Migration) {
		fmt.Fprintf(stdout, "applied %s\n", m.Name)
	})
	if err != nil {
		return err
	}
	v, err := st.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintf(stdout, "no migrations to apply: schema is at version %d\n", v)
		return nil
	}
	fmt.Fprintf(stdout, "applied %d migration(s): schema is at version %d\n", n, v)
	return nil
}

func seed(ctx context.Context, cfg Config, wait time.Duration, stdout io.Writer) error {
	st, err := openReady(ctx, cfg, wait)
	if err != nil {
		return err
	}
	defer st.Close()
	n, err := st.Seed(ctx, store.SeedNames)
	if err != nil {
		return fmt.Errorf("%w (has migrate run?)", err)
	}
	fmt.Fprintf(stdout, "seeded %d new item(s); %d already present\n", n, len(store.SeedNames)-n)
	if cfg.DataDir != "" {
		// A note for serve to show (GET /starts): data a build step left.
		note := fmt.Sprintf("seeded %d item(s)\n", len(store.SeedNames))
		if err := os.WriteFile(filepath.Join(cfg.DataDir, "seeded"), []byte(note), 0o644); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	return nil
}
