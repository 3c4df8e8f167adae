package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOptimizeCLI(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "run.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755)
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("hello\n"), 0o644)
	tests := []struct {
		name      string
		args      []string
		code      int
		out, err  string
		unchanged []string
	}{
		{"no files", []string{"optimize"}, ExitUsage, "", "name at least one FILE", nil},
		{"bad compress", []string{"optimize", "--compress", "gzip", script}, ExitUsage, "", "--compress gzip", nil},
		{"bad level", []string{"optimize", "--level", "11", script}, ExitUsage, "", "--level 11", nil},
		{"nothing to do", []string{"optimize", "--no-strip", "--compress", "none", script}, ExitUsage, "", "nothing to do", nil},
		{"skipped files are handled", []string{"optimize", "--compress", "none", "--verify", "--version", script, text}, ExitOK,
			"run.sh: a script (#!/bin/sh)", "", []string{script, text}},
		{"missing file fails", []string{"optimize", "--compress", "none", script, filepath.Join(dir, "nope")}, ExitFailure,
			"skipped", "1 of 2 files could not be optimized", []string{script}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string][]byte{}
			for _, p := range tt.unchanged {
				before[p], _ = os.ReadFile(p)
			}
			out, errOut, code := run(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
				t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, stdout with %q, stderr with %q", code, out, errOut, tt.code, tt.out, tt.err)
			}
			for p, b := range before {
				if got, _ := os.ReadFile(p); !bytes.Equal(got, b) {
					t.Errorf("%s changed", p)
				}
			}
		})
	}
}
