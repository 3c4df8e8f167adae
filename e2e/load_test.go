package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/store"
)

// loadDuration is how long the load runs: 60 s, or EMU_LOAD_DURATION.
func loadDuration(t *testing.T) time.Duration {
	if v := os.Getenv("EMU_LOAD_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("EMU_LOAD_DURATION: %v", err)
		}
		return d
	}
	return 60 * time.Second
}

// load runs 64 clients against the demo API through its forward for a
// bounded time, reads and writes, and wants no failed request; emu status
// and emu logs must answer while it runs. It logs p50, p99 and throughput
// (docs/benchmarks.md).
func load(ctx context.Context, t *testing.T, home, bundleDir string) {
	inst := store.At(home).Instance("demo")
	t.Cleanup(func() {
		run(context.Background(), "down", bundleDir, "--poweroff")
		for _, pid := range qemuPids(inst.Dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Running already after durability; if not, up starts it.
	if _, stderr, code := run(ctx, "up", bundleDir, "--port=api.http="+strconv.Itoa(freePort(t)),
		"--port=postgres.sql="+strconv.Itoa(freePort(t)), "--port=valkey.resp="+strconv.Itoa(freePort(t))); code != 0 {
		t.Fatalf("emu up exited %d:\n%s", code, stderr)
	}
	base := emuEnv(ctx, t, bundleDir)["API_URL"]
	if base == "" {
		t.Fatal("emu env --json: no API_URL")
	}
	const clients = 64
	dur := loadDuration(t)
	// A request that takes longer than this failed. Under TCG a few take
	// tens of seconds, one took 109 s: the guest's TCP retransmits through
	// QEMU's user-mode network (docs/benchmarks.md), and Linux's backoff
	// doubles from 0.2 s up to 120 s a try. The stalls are counted and
	// logged; a request that never completes fails the test.
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients},
		Timeout:   5 * time.Minute,
	}
	lctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var failures []string
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				var req *http.Request
				if i%5 == 4 { // one write in five
					req, _ = http.NewRequest("POST", base+"/items", strings.NewReader(fmt.Sprintf(`{"name":"load-%d-%d"}`, c, i)))
					req.Header.Set("Content-Type", "application/json")
				} else {
					req, _ = http.NewRequest("GET", base+"/items", nil)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				d := time.Since(t0)
				ok := err == nil && resp.StatusCode < 300
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				if ok {
					lat = append(lat, d)
				} else if lctx.Err() == nil || err == nil {
					why := fmt.Sprint(err)
					if err == nil {
						why = resp.Status
					}
					failures = append(failures, req.Method+" "+req.URL.Path+": "+why)
				}
				mu.Unlock()
			}
		}()
	}
	// emu status and emu logs answer while the load runs.
	time.Sleep(min(dur/3, 10*time.Second))
	for _, args := range [][]string{{"status", bundleDir}, {"logs", "api", "--name", "demo"}} {
		t0 := time.Now()
		out, stderr, code := run(ctx, args...)
		if code != 0 || out == "" {
			t.Errorf("emu %s under load: exit %d, %d bytes out:\n%s", args[0], code, len(out), stderr)
		}
		t.Logf("emu %s under load answered in %s", args[0], time.Since(t0).Round(time.Millisecond))
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(failures) > 0 {
		t.Errorf("%d failed requests under load, first: %s", len(failures), failures[0])
	}
	if len(lat) == 0 {
		t.Fatal("no request succeeded")
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	slow := len(lat) - sort.Search(len(lat), func(i int) bool { return lat[i] > 5*time.Second })
	t.Logf("load: %d clients for %s: %d requests (%.0f/s), p50 %s, p99 %s, max %s, %d over 5 s, %d failed",
		clients, elapsed.Round(time.Second), len(lat), float64(len(lat))/elapsed.Seconds(),
		p(0.50).Round(100*time.Microsecond), p(0.99).Round(100*time.Microsecond), lat[len(lat)-1].Round(time.Millisecond), slow, len(failures))
	st, _, _ := run(ctx, "exec", "demo", "--", "grep", "-A1", "^Tcp:", "/proc/net/snmp")
	t.Logf("the guest's TCP counters after the load:\n%s", st)
}
