package disk

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sparseDisk writes a raw disk of size bytes at path with data at the given
// offsets (each a run of n pseudo-random, half-compressible bytes) and
// holes elsewhere, and returns its content's expected bytes per offset.
func sparseDisk(t testing.TB, path string, size int64, n int, offsets ...int64) map[int64][]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	want := map[int64][]byte{}
	for _, off := range offsets {
		b := make([]byte, n)
		for i := range b {
			if i%2 == 0 {
				b[i] = byte(r.IntN(256))
			} else {
				b[i] = 'a' + byte(i%7)
			}
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		want[off] = b
	}
	return want
}

func needTools(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"tar", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("packing needs %s: %v", tool, err)
		}
	}
}

func TestPackUnpackRoundTrip(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	const size = 256 << 20
	// Data at the start, mid-block, across a 1 MiB read boundary, and at
	// the very end; a zero run inside the data too.
	want := sparseDisk(t, raw, size, 10000, 0, 5<<20+123, 8<<20-4000, size-10000)
	f, _ := os.OpenFile(raw, os.O_WRONLY, 0)
	f.WriteAt(make([]byte, 8192), 5<<20+123+1000) // zeros inside a data run
	f.Close()
	copy(want[5<<20+123][1000:], make([]byte, 8192))

	packed := filepath.Join(dir, "disk.tar.zst")
	ctx := context.Background()
	if err := Pack(ctx, raw, packed, 3); err != nil {
		t.Fatal(err)
	}
	out, err := Unpack(ctx, packed, filepath.Join(dir, "cache", "abc"))
	if err != nil {
		t.Fatal(err)
	}
	checkUnpacked(t, out, size, want)
	// Nothing left beside the cache entry.
	if left, _ := filepath.Glob(filepath.Join(dir, "cache", ".abc.tmp-*")); len(left) > 0 {
		t.Errorf("temporary directories left: %v", left)
	}
	// Both ways give the same disk.
	ways := map[string]func(context.Context, string, string) error{"go": unpackGo}
	if gnuTar() != "" {
		ways["zstd|tar"] = unpackExec
	}
	for name, unpack := range ways {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o755)
		if err := unpack(ctx, packed, d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkUnpacked(t, filepath.Join(d, PackedName), size, want)
		os.RemoveAll(d)
	}
}

func checkUnpacked(t *testing.T, out string, size int64, want map[int64][]byte) {
	t.Helper()
	st, err := os.Stat(out)
	if err != nil || st.Size() != size {
		t.Fatalf("unpacked %v, size %d; want %d bytes", err, st.Size(), int64(size))
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for off, w := range want {
		if !bytes.Equal(got[off:off+int64(len(w))], w) {
			t.Errorf("bytes at %d differ", off)
		}
	}
	// Everything else is zero.
	for off, w := range want {
		copy(got[off:], make([]byte, len(w)))
	}
	if !bytes.Equal(got, make([]byte, size)) {
		t.Errorf("bytes outside the data are not all zero")
	}
	if a, err := Allocated(out); err != nil || a > 1<<20 {
		t.Errorf("%s allocates %d bytes (%v), want it sparse (about 40 KB)", out, a, err)
	}
}

func TestUnpackBadInput(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	ctx := context.Background()
	garbage := filepath.Join(dir, "garbage.tar.zst")
	os.WriteFile(garbage, []byte("not zstd at all"), 0o644)
	if _, err := Unpack(ctx, garbage, filepath.Join(dir, "c1")); err == nil {
		t.Errorf("Unpack of garbage succeeded")
	}
	// A valid archive whose member is not disk.raw.
	other := filepath.Join(dir, "other.raw")
	sparseDisk(t, other, 1<<20, 100, 0)
	noDisk := filepath.Join(dir, "nodisk.tar.zst")
	if out, err := exec.Command("sh", "-c", "tar -C "+dir+" -cf - other.raw | zstd -q -o "+noDisk).CombinedOutput(); err != nil {
		t.Fatalf("make archive: %v: %s", err, out)
	}
	if _, err := Unpack(ctx, noDisk, filepath.Join(dir, "c2")); err == nil {
		t.Errorf("Unpack of an archive without disk.raw succeeded")
	}
	os.Mkdir(filepath.Join(dir, "g"), 0o755)
	if err := unpackGo(ctx, noDisk, filepath.Join(dir, "g")); err == nil || !strings.Contains(err.Error(), "no disk.raw in the archive") {
		t.Errorf("unpackGo of an archive without disk.raw = %v", err)
	}
	// A truncated stream.
	packed := filepath.Join(dir, "other.tar.zst")
	if err := Pack(ctx, other, packed, 1); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(packed)
	trunc := filepath.Join(dir, "trunc.tar.zst")
	os.WriteFile(trunc, b[:len(b)/2], 0o644)
	if _, err := Unpack(ctx, trunc, filepath.Join(dir, "c3")); err == nil {
		t.Errorf("Unpack of a truncated archive succeeded")
	}
	os.Mkdir(filepath.Join(dir, "g2"), 0o755)
	if err := unpackGo(ctx, trunc, filepath.Join(dir, "g2")); err == nil {
		t.Errorf("unpackGo of a truncated archive succeeded")
	}
	for _, d := range []string{"c1", "c2", "c3"} {
		if _, err := os.Stat(filepath.Join(dir, d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a failed unpack left %s: %v", d, err)
		}
	}
}

func TestWriteSparseCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f, err := os.Create(filepath.Join(t.TempDir(), "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := writeSparse(ctx, f, bytes.NewReader(make([]byte, 10))); !errors.Is(err, context.Canceled) {
		t.Errorf("writeSparse after cancel = %v", err)
	}
}

// BenchmarkUnpack unpacks one packed disk in-process (unpackGo) and with
// the zstd | tar pipeline (unpackExec), alternately in the same run, and
// reports both times and their ratio. EMU_BENCH_PACKED names a real packed disk
// (a bundle's disk.tar.zst); without it a 1 GiB disk with 192 MiB of data
// is made.
func BenchmarkUnpack(b *testing.B) {
	needTools(b)
	if gnuTar() == "" {
		b.Skip("no GNU tar: nothing to compare with")
	}
	dir := b.TempDir()
	packed := os.Getenv("EMU_BENCH_PACKED")
	if packed == "" {
		raw := filepath.Join(dir, "src.raw")
		var offs []int64
		for i := range 48 {
			offs = append(offs, int64(i)*(20<<20))
		}
		sparseDisk(b, raw, 1<<30, 4<<20, offs...)
		packed = filepath.Join(dir, "disk.tar.zst")
		if err := Pack(context.Background(), raw, packed, PackLevel); err != nil {
			b.Fatal(err)
		}
		os.Remove(raw)
	}
	ctx := context.Background()
	var goT, execT time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		g := filepath.Join(dir, "go")
		os.MkdirAll(g, 0o755)
		if err := unpackGo(ctx, packed, g); err != nil {
			b.Fatal(err)
		}
		goT += time.Since(t0)
		os.RemoveAll(g)
		x := filepath.Join(dir, "exec")
		os.MkdirAll(x, 0o755)
		t0 = time.Now()
		if err := unpackExec(ctx, packed, x); err != nil {
			b.Fatal(err)
		}
		execT += time.Since(t0)
		os.RemoveAll(x)
	}
	b.ReportMetric(goT.Seconds()/float64(b.N), "go-s/op")
	b.ReportMetric(execT.Seconds()/float64(b.N), "zstd|tar-s/op")
	b.ReportMetric(float64(goT)/float64(execT), "go/zstd|tar")
}
