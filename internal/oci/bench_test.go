package oci_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/oci"
	"github.com/emu-dev/emu/internal/oci/regtest"
	"github.com/emu-dev/emu/internal/store"
)

// BenchmarkPushPull measures, in one run against a local docker-registry,
// a push of a synthetic bundle, a pull of it into an empty store, and the
// floor: curl fetching the same blobs from the same registry into files,
// and the same followed by sync(1) of those files (the pull fsyncs each
// blob before it counts as done).
// The disk is random bytes (incompressible, as a zstd stream is), of
// EMU_BENCH_DISK_MB megabytes (default 200; the demo's disk is 98 MB), or
// EMU_BENCH_BUNDLE names a real bundle directory to push and pull.
//
//	go test -run '^$' -bench PushPull -benchtime 3x ./internal/oci/
//	EMU_BENCH_BUNDLE=~/.local/share/emu/images/demo go test -run '^$' -bench PushPull -benchtime 5x ./internal/oci/
func BenchmarkPushPull(b *testing.B) {
	mb := 200
	if v := os.Getenv("EMU_BENCH_DISK_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("EMU_BENCH_DISK_MB=%q: %v", v, err)
		}
		mb = n
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("the floor is curl: not installed")
	}
	regtest.NoDockerConfig(b)
	reg := regtest.Start(b, regtest.Options{})
	src := os.Getenv("EMU_BENCH_BUNDLE")
	if src == "" {
		src = regtest.Bundle(b, b.TempDir(), "bench", "amd64", mb<<20)
	}
	man, err := bundle.Read(src)
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, f := range man.Files {
		total += f.Size
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	var push, pull, floor, floorSync time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A fresh repository each round, so every push uploads everything.
		ref := fmt.Sprintf("%s/bench%d:%s", reg.Addr, i, man.Arch)
		start := time.Now()
		if _, err := oci.Push(ctx, oci.PushOptions{Ref: ref, Bundles: []string{src}}); err != nil {
			b.Fatal(err)
		}
		push += time.Since(start)

		// The floor: every blob by plain GET, written to a file (curl
		// does not fsync; the pull does, once per blob).
		dir := b.TempDir()
		start = time.Now()
		for name, f := range man.Files {
			u := fmt.Sprintf("http://%s/v2/bench%d/blobs/sha256:%s", reg.Addr, i, f.SHA256)
			if out, err := exec.CommandContext(ctx, curl, "-sSf", "-o", filepath.Join(dir, name), u).CombinedOutput(); err != nil {
				b.Fatalf("curl %s: %v: %s", u, err, out)
			}
		}
		floor += time.Since(start)
		// The same files made durable, as the pull makes its blobs.
		var files []string
		for name := range man.Files {
			files = append(files, filepath.Join(dir, name))
		}
		if out, err := exec.CommandContext(ctx, "sync", files...).CombinedOutput(); err != nil {
			b.Fatalf("sync: %v: %s", err, out)
		}
		floorSync += time.Since(start)

		home := store.At(b.TempDir())
		start = time.Now()
		if _, err := oci.Pull(ctx, oci.PullOptions{Ref: ref, Arch: man.Arch, Home: home}); err != nil {
			b.Fatal(err)
		}
		pull += time.Since(start)
	}
	b.StopTimer()
	n := float64(b.N)
	rate := func(d time.Duration) float64 { return float64(total) / 1e6 / (d.Seconds() / n) }
	b.ReportMetric(push.Seconds()/n, "push-s")
	b.ReportMetric(pull.Seconds()/n, "pull-s")
	b.ReportMetric(floor.Seconds()/n, "curl-s")
	b.ReportMetric(pull.Seconds()/floor.Seconds(), "pull/curl")
	b.ReportMetric(floorSync.Seconds()/n, "curl+sync-s")
	b.ReportMetric(pull.Seconds()/floorSync.Seconds(), "pull/curl+sync")
	b.ReportMetric(rate(pull), "pull-MB/s")
	b.ReportMetric(rate(floor), "curl-MB/s")
	b.ReportMetric(rate(push), "push-MB/s")
}
