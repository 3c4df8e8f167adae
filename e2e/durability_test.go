package e2e

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/emu-dev/emu/internal/store"
)

// writer inserts rows into the demo's PostgreSQL through its forward, each
// in its own committed transaction, and records every id the server
// confirmed, until an insert fails (or ctx ends).
type writer struct {
	mu        sync.Mutex
	confirmed []int64
	err       error
	done      chan struct{}
}

func startWriter(ctx context.Context, t *testing.T, url string, from int64) *writer {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(cctx, url)
	if err != nil {
		t.Fatalf("pgx connect %s: %v", url, err)
	}
	if _, err := conn.Exec(cctx, "CREATE TABLE IF NOT EXISTS durability (id bigint PRIMARY KEY)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	w := &writer{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		for id := from; ctx.Err() == nil; id++ {
			// A bounded wait per insert: a writer whose server went away
			// must see an error, never hang.
			ictx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := conn.Exec(ictx, "INSERT INTO durability (id) VALUES ($1)", id)
			cancel()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			w.confirmed = append(w.confirmed, id)
			w.mu.Unlock()
		}
	}()
	return w
}

// count is how many inserts the server has confirmed so far.
func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.confirmed)
}

// awaitRows waits until the writer has n confirmed rows.
func (w *writer) awaitRows(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for w.count() < n {
		select {
		case <-deadline:
			t.Fatalf("the writer confirmed %d rows in 2 min, want %d (err %v)", w.count(), n, w.err)
		case <-w.done:
			t.Fatalf("the writer stopped after %d rows: %v", w.count(), w.err)
		case <-tick.C:
		}
	}
}

// end waits for the writer to see its server go: an error, not a hang.
func (w *writer) end(t *testing.T, what string) {
	t.Helper()
	select {
	case <-w.done:
		t.Logf("%s: the writer had %d rows confirmed, then: %v", what, w.count(), w.err)
	case <-time.After(time.Minute):
		t.Fatalf("%s: the writer still waits a minute later: it hangs instead of seeing an error", what)
	}
}

// missing lists the confirmed ids not in the table.
func missing(ctx context.Context, t *testing.T, url string, confirmed []int64) []int64 {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(cctx, url)
	if err != nil {
		t.Fatalf("pgx connect %s: %v", url, err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(cctx, "SELECT id FROM durability")
	if err != nil {
		t.Fatal(err)
	}
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var lost []int64
	for _, id := range confirmed {
		if !have[id] {
			lost = append(lost, id)
		}
	}
	return lost
}

// durability writes committed rows under load while the guest is killed,
// suspended or powered off, and checks that every row the server
// confirmed is there after the next up.
func durability(ctx context.Context, t *testing.T, home, bundleDir string) {
	inst := store.At(home).Instance("demo")
	mark := inst.Dir
	// The guest is left running for the next subtest (load); a failure
	// stops it.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		run(context.Background(), "down", bundleDir, "--poweroff")
		for _, pid := range qemuPids(mark) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	portFlags := []string{"--port=api.http=" + strconv.Itoa(freePort(t)),
		"--port=postgres.sql=" + strconv.Itoa(freePort(t)), "--port=valkey.resp=" + strconv.Itoa(freePort(t))}
	up := func() {
		t.Helper()
		if _, stderr, code := run(ctx, append([]string{"up", bundleDir}, portFlags...)...); code != 0 {
			t.Fatalf("emu up exited %d:\n%s", code, stderr)
		}
	}
	dbURL := func() string {
		t.Helper()
		env := emuEnv(ctx, t, bundleDir)
		return env["DATABASE_URL"]
	}

	var all []int64
	next := int64(1)
	// Each round starts with the guest running and ends with it running
	// again (the up that checks the rows): cold boots are the slow part.
	up()
	for _, tc := range []struct {
		name string
		stop func(t *testing.T)
	}{
		{"emu down (suspend)", func(t *testing.T) {
			if _, stderr, code := run(ctx, "down", bundleDir); code != 0 || !strings.Contains(stderr, "suspended") {
				t.Fatalf("emu down: exit %d:\n%s", code, stderr)
			}
		}},
		{"kill -9 of qemu", func(t *testing.T) {
			pids := qemuPids(mark)
			if len(pids) != 1 {
				t.Fatalf("%d qemu processes, want 1", len(pids))
			}
			syscall.Kill(pids[0], syscall.SIGKILL)
			waitDead(t, pids[0])
		}},
		{"emu down --poweroff", func(t *testing.T) {
			if _, stderr, code := run(ctx, "down", bundleDir, "--poweroff"); code != 0 {
				t.Fatalf("emu down --poweroff: exit %d:\n%s", code, stderr)
			}
		}},
	} {
		url := dbURL()
		w := startWriter(ctx, t, url, next)
		// In the middle of the load.
		w.awaitRows(t, 200)
		tc.stop(t)
		w.end(t, tc.name)
		if w.err == nil || errors.Is(w.err, context.Canceled) {
			t.Errorf("%s: the writer saw no error", tc.name)
		}
		all = append(all, w.confirmed...)
		next += int64(len(w.confirmed)) + 1000
		up()
		if lost := missing(ctx, t, dbURL(), all); len(lost) > 0 {
			t.Errorf("after %s and up: %d of %d confirmed rows lost (first %v)", tc.name, len(lost), len(all), lost[:min(5, len(lost))])
		}
	}
	t.Logf("%d confirmed rows, none lost", len(all))
}
