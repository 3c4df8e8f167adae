// Package golden compares test output with files under testdata, for the
// contracts users and other tools read: QEMU command lines, manifest.json,
// instance.json, status --json, the provision request. Run a package's
// tests with -update to rewrite its files after an intended change, and
// review the diff.
package golden

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// Check compares got with testdata/name, or writes it there with -update.
func Check(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs (run with -update if intended, and review the diff)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// Lines joins argv one argument a line, as the argv golden files hold it.
func Lines(argv []string) []byte {
	var b []byte
	for _, a := range argv {
		b = append(append(b, a...), '\n')
	}
	return b
}
