package build

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/store"
)

// Two builds of one stack into one place: the second fails at once, naming
// the first, and touches nothing; once the first ends, the next may start.
func TestSecondBuildRefused(t *testing.T) {
	out := t.TempDir()
	final := filepath.Join(out, "demo")
	home := store.At(t.TempDir())
	release, err := lockOutput(home.Locks(), final)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(final, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(final, store.BundleManifest), []byte(`{"name":"previous"}`), 0o644)

	start := time.Now()
	_, err = Build(context.Background(), Options{Stack: demoStack(t), Home: home, OutDir: out})
	var be *Error
	if !errors.As(err, &be) || be.Stage != "prepare" ||
		!strings.Contains(err.Error(), "another emu build or pull (pid "+strconv.Itoa(os.Getpid())+") is writing "+final) {
		t.Fatalf("second build = %v, want it refused naming the first", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("refusing took %s", took)
	}
	if b, _ := os.ReadFile(filepath.Join(final, store.BundleManifest)); string(b) != `{"name":"previous"}` {
		t.Errorf("the bundle changed: %s", b)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("the output directory holds %d entries, want the bundle alone", len(ents))
	}
	release()
	again, err := lockOutput(home.Locks(), final)
	if err != nil {
		t.Errorf("lock after the first build ended: %v", err)
	} else {
		again()
	}
}
