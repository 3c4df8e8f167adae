package binopt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeRunner imitates strip and upx: it writes outputs of chosen sizes.
type fakeRunner struct {
	stripFails, upxFails bool
	calls                []string
}

func (f *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	var out, in string
	for i, a := range args {
		if a == "-o" {
			out, in = args[i+1], args[i+2]
		}
	}
	if out == "" {
		return nil, nil // upx -t
	}
	fi, err := os.Stat(in)
	if err != nil {
		return nil, err
	}
	size := fi.Size() / 2
	switch {
	case name == "strip" && f.stripFails:
		return []byte("strip: in: file format not recognized\n"), errors.New("exit status 1")
	case name == "upx" && f.upxFails:
		return []byte("upx: " + in + ": NotCompressibleException\n"), errors.New("exit status 2")
	case name == "upx":
		size = fi.Size() / 3
	}
	return nil, os.WriteFile(out, bytes.Repeat([]byte{byte(len(name))}, int(size)), 0o600)
}

// fakeVerifier passes or fails by candidate: the directory it lies in, or
// "original" for anything else.
type fakeVerifier struct {
	fail map[Candidate]bool
	hang Candidate
	ran  []Candidate
}

func (f *fakeVerifier) Run(_ context.Context, path string, args []string, timeout time.Duration) (Outcome, error) {
	c := Candidate(filepath.Base(filepath.Dir(path)))
	if c != Stripped && c != Compressed {
		c = Original
	}
	f.ran = append(f.ran, c)
	switch {
	case c == f.hang:
		return Outcome{TimedOut: true, ExitCode: -1}, nil
	case f.fail[c]:
		return Outcome{ExitCode: 1, Output: []byte("broken\n")}, nil
	}
	return Outcome{Output: []byte("demo 1.0\n")}, nil
}

func TestDecide(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(orig))
	verify := &Verify{Args: []string{"version"}, Output: "demo"}
	tests := []struct {
		name        string
		runner      fakeRunner
		fail        map[Candidate]bool
		hang        Candidate
		noVerify    bool
		strip       bool
		dryRun      bool
		want        Candidate
		wantErr     error
		wantSize    int64
		wantRan     []Candidate
		wantReason  string
		wantVerfied bool
	}{
		{name: "all pass", strip: true, want: Compressed, wantSize: size / 2 / 3,
			wantRan: []Candidate{Stripped, Compressed}, wantVerfied: true},
		{name: "compressed fails", strip: true, fail: map[Candidate]bool{Compressed: true}, want: Stripped,
			wantSize: size / 2, wantRan: []Candidate{Stripped, Compressed}, wantVerfied: true,
			wantReason: "the compressed file fails its verify (exit code 1, want 0)"},
		{name: "compressed hangs", strip: true, hang: Compressed, want: Stripped, wantSize: size / 2,
			wantRan: []Candidate{Stripped, Compressed}, wantVerfied: true, wantReason: "still running after 30s"},
		{name: "strip fails", strip: true, runner: fakeRunner{stripFails: true}, want: Compressed, wantSize: size / 3,
			wantRan: []Candidate{Compressed}, wantVerfied: true, wantReason: "strip failed, so the original goes on: strip: in: file format not recognized"},
		{name: "stripped fails, compress the original", strip: true, fail: map[Candidate]bool{Stripped: true},
			want: Compressed, wantSize: size / 3, wantRan: []Candidate{Stripped, Original, Compressed}, wantVerfied: true,
			wantReason: "the stripped file fails its verify"},
		{name: "only the original passes", strip: true, fail: map[Candidate]bool{Stripped: true, Compressed: true},
			want: Original, wantSize: size, wantRan: []Candidate{Stripped, Original, Compressed}, wantVerfied: true},
		{name: "nothing passes", strip: true, fail: map[Candidate]bool{Stripped: true, Compressed: true, Original: true},
			want: Original, wantSize: size, wantErr: ErrOriginalFails, wantRan: []Candidate{Stripped, Original},
			wantReason: "fails its verify too"},
		{name: "no strip, compressed fails, original fails", fail: map[Candidate]bool{Compressed: true, Original: true},
			want: Original, wantSize: size, wantErr: ErrOriginalFails, wantRan: []Candidate{Compressed, Original}},
		{name: "upx fails", strip: true, runner: fakeRunner{upxFails: true}, want: Stripped, wantSize: size / 2,
			wantRan: []Candidate{Stripped}, wantVerfied: true, wantReason: "upx failed, so the stripped file goes on: upx: stripped "},
		{name: "no verify", strip: true, noVerify: true, want: Compressed, wantSize: size / 2 / 3},
		{name: "dry run", strip: true, dryRun: true, want: Compressed, wantSize: size, wantRan: []Candidate{Stripped, Compressed}, wantVerfied: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "app")
			if err := os.WriteFile(src, orig, 0o751); err != nil {
				t.Fatal(err)
			}
			v := &fakeVerifier{fail: tt.fail, hang: tt.hang}
			opts := Options{Arch: hostArch(t), Strip: tt.strip, Compress: CompressUPX, UPX: "upx", Verify: verify, Verifier: v, DryRun: tt.dryRun}
			if tt.noVerify {
				opts.Verify = nil
			}
			r := tt.runner
			rep, err := Optimize(context.Background(), &r, src, src, opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Optimize: %v, want %v", err, tt.wantErr)
			}
			if rep.Chosen != tt.want || rep.Kind != Executable || rep.Verified != tt.wantVerfied {
				t.Errorf("chosen %s (kind %s, verified %v), want %s (verified %v); reason: %s", rep.Chosen, rep.Kind, rep.Verified, tt.want, tt.wantVerfied, rep.Reason)
			}
			if fmt.Sprint(v.ran) != fmt.Sprint(tt.wantRan) {
				t.Errorf("verified %v, want %v", v.ran, tt.wantRan)
			}
			if !strings.Contains(rep.Reason, tt.wantReason) {
				t.Errorf("reason %q lacks %q", rep.Reason, tt.wantReason)
			}
			fi, err := os.Stat(src)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != tt.wantSize || fi.Mode().Perm() != 0o751 {
				t.Errorf("file is %d bytes, mode %v; want %d bytes, mode 0751", fi.Size(), fi.Mode().Perm(), tt.wantSize)
			}
			if tt.want == Original || tt.dryRun {
				if got, _ := os.ReadFile(src); !bytes.Equal(got, orig) {
					t.Error("the original's bytes changed")
				}
			}
			assertNoLeftovers(t, dir)
		})
	}
}

func TestOptimizeToOtherDst(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(self)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "app"), filepath.Join(dir, "out", "app")
	os.WriteFile(src, orig, 0o755)
	os.Mkdir(filepath.Dir(dst), 0o755)
	for _, fail := range []bool{false, true} {
		v := &fakeVerifier{fail: map[Candidate]bool{Stripped: fail, Compressed: fail}}
		rep, err := Optimize(context.Background(), &fakeRunner{}, src, dst, Options{Arch: hostArch(t), Strip: true, Compress: CompressUPX, UPX: "upx", Verify: &Verify{}, Verifier: v})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(dst)
		if int64(len(got)) != rep.Size() {
			t.Errorf("fail=%v: dst has %d bytes, report says %s of %d", fail, len(got), rep.Chosen, rep.Size())
		}
		if fail && !bytes.Equal(got, orig) {
			t.Errorf("fail=%v: dst is not the original", fail)
		}
		if src, _ := os.ReadFile(src); !bytes.Equal(src, orig) {
			t.Error("src changed")
		}
	}
	assertNoLeftovers(t, filepath.Dir(dst))
}

func assertNoLeftovers(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".emu-binopt") {
			t.Errorf("left behind %s", e.Name())
		}
	}
}
