package binopt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// upxTestFails makes the fake's upx -t fail.
type upxTestFails struct{ fakeRunner }

func (f *upxTestFails) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if len(args) > 0 && args[0] == "-t" {
		return []byte("upx: compressed: CantUnpackException\n"), errors.New("exit status 2")
	}
	return f.fakeRunner.Run(ctx, name, args...)
}

func TestPrepare(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(orig))
	tests := []struct {
		name       string
		runner     Runner
		strip      bool
		compress   string
		src        []byte
		want       []Candidate
		chosen     Candidate
		sizes      [2]int64 // stripped, compressed as files
		wantReason string
	}{
		{name: "strip and upx", runner: &fakeRunner{}, strip: true, compress: CompressUPX,
			want: []Candidate{Compressed, Stripped}, chosen: Compressed, sizes: [2]int64{size / 2, size / 2 / 3}},
		{name: "upx only", runner: &fakeRunner{}, compress: CompressUPX,
			want: []Candidate{Compressed}, chosen: Compressed, sizes: [2]int64{0, size / 3}},
		{name: "strip only", runner: &fakeRunner{}, strip: true, compress: CompressNone,
			want: []Candidate{Stripped}, chosen: Stripped, sizes: [2]int64{size / 2, 0}},
		{name: "upx fails", runner: &fakeRunner{upxFails: true}, strip: true, compress: CompressUPX,
			want: []Candidate{Stripped}, chosen: Stripped, sizes: [2]int64{size / 2, 0}, wantReason: "upx failed"},
		{name: "upx -t fails", runner: &upxTestFails{}, strip: true, compress: CompressUPX,
			want: []Candidate{Stripped}, chosen: Stripped, sizes: [2]int64{size / 2, 0}, wantReason: "upx -t rejects the compressed file: upx: compressed: CantUnpackException"},
		{name: "strip fails", runner: &fakeRunner{stripFails: true}, strip: true, compress: CompressUPX,
			want: []Candidate{Compressed}, chosen: Compressed, sizes: [2]int64{0, size / 3}, wantReason: "strip failed"},
		{name: "script", runner: &fakeRunner{}, strip: true, compress: CompressUPX, src: []byte("#!/bin/sh\necho hi\n"),
			chosen: Original, wantReason: "a script"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "app")
			data := orig
			if tt.src != nil {
				data = tt.src
			}
			if err := os.WriteFile(src, data, 0o751); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			os.Mkdir(out, 0o755)
			p, err := Prepare(context.Background(), tt.runner, src, out, Options{Arch: hostArch(t), Strip: tt.strip, Compress: tt.compress, UPX: "upx"})
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if fmt.Sprint(p.Made()) != fmt.Sprint(tt.want) || p.Report.Chosen != tt.chosen || p.Report.Verified {
				t.Errorf("made %v, chosen %s (verified %v); want %v, %s", p.Made(), p.Report.Chosen, p.Report.Verified, tt.want, tt.chosen)
			}
			if !strings.Contains(p.Report.Reason, tt.wantReason) {
				t.Errorf("reason %q lacks %q", p.Report.Reason, tt.wantReason)
			}
			for i, c := range []Candidate{Stripped, Compressed} {
				fi, err := os.Stat(CandidateFile(out, c))
				switch {
				case tt.sizes[i] == 0 && err == nil:
					t.Errorf("%s left in dir, though not kept", c)
				case tt.sizes[i] != 0 && err != nil:
					t.Errorf("%s: %v", c, err)
				case tt.sizes[i] != 0 && (fi.Size() != tt.sizes[i] || fi.Mode().Perm() != 0o751 || p.Path(c) != CandidateFile(out, c)):
					t.Errorf("%s is %d bytes, mode %v, at %q; want %d, 0751", c, fi.Size(), fi.Mode().Perm(), p.Path(c), tt.sizes[i])
				}
			}
			if got, _ := os.ReadFile(src); string(got) != string(data) {
				t.Error("src changed")
			}
		})
	}
}
