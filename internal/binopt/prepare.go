package binopt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Prepared is what Prepare made: the candidates' paths, "" for one that was
// not made or is not worth keeping.
type Prepared struct {
	// Report has the sizes, the kind and the notes; Chosen is the smallest
	// candidate made, what an unverified build installs, and Verified is
	// false: nothing was run.
	Report     Report
	Stripped   string
	Compressed string
}

// Made returns the candidates made, smallest first.
func (p Prepared) Made() []Candidate {
	var cs []Candidate
	if p.Compressed != "" {
		cs = append(cs, Compressed)
	}
	if p.Stripped != "" {
		cs = append(cs, Stripped)
	}
	return cs
}

// Path returns candidate c's path ("" when it was not made).
func (p Prepared) Path(c Candidate) string {
	switch c {
	case Stripped:
		return p.Stripped
	case Compressed:
		return p.Compressed
	}
	return ""
}

// Prepare makes the candidates for src as dir/stripped and dir/compressed
// (dir must exist), for a verifier elsewhere: it runs none of them, since
// emu build verifies in the guest, where they will run. The compressed file
// is made from the stripped one when there is one, and must pass upx -t.
// A file that is not an executable for opts.Arch gets no candidates: the
// report's Kind and Reason say why, and the error is nil, as in Optimize.
// opts.Verify, Verifier and DryRun are not used.
func Prepare(ctx context.Context, r Runner, src, dir string, opts Options) (p Prepared, err error) {
	start := time.Now()
	p.Report = Report{Path: src, Chosen: Original}
	defer func() { p.Report.Duration = time.Since(start) }()
	if err := opts.validate(); err != nil {
		return p, err
	}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	fi, err := os.Stat(src)
	if err != nil {
		return p, err
	}
	p.Report.Original = fi.Size()
	kind, err := Detect(src, opts.Arch)
	p.Report.Kind = kind
	var skip *SkipError
	if errors.As(err, &skip) {
		p.Report.Reason = skip.Reason
		return p, nil
	}
	if err != nil {
		return p, err
	}
	if opts.Compress == CompressUPX && opts.UPX == "" {
		if opts.UPX, err = FindUPX(); err != nil {
			return p, err
		}
	}
	o := &optimizer{ctx: ctx, r: r, opts: opts, src: src, dir: dir, mode: fi.Mode().Perm(), rep: &p.Report}
	p.Stripped, p.Compressed, err = o.prepare()
	p.Report.Reason = o.notes.String()
	switch {
	case p.Compressed != "":
		p.Report.Chosen = Compressed
	case p.Stripped != "":
		p.Report.Chosen = Stripped
	}
	return p, err
}

// prepare makes the candidates and removes those not worth keeping.
func (o *optimizer) prepare() (stripped, compressed string, err error) {
	drop := func(c Candidate) {
		path, _ := o.candidate(c)
		os.Remove(path)
	}
	if o.opts.Strip {
		if stripped, err = o.strip(); err != nil {
			return "", "", err
		}
		if stripped == "" {
			drop(Stripped)
		}
	}
	if o.opts.Compress != CompressUPX {
		return stripped, "", nil
	}
	in, inSize, from := o.src, o.rep.Original, Original
	if stripped != "" {
		in, inSize, from = stripped, o.rep.Stripped, Stripped
	}
	if compressed, err = o.compress(in, inSize, from); err != nil {
		return stripped, "", err
	}
	if compressed != "" {
		ok, err := o.upxTest(compressed)
		if err != nil {
			return stripped, "", err
		}
		if !ok {
			compressed = ""
		}
	}
	if compressed == "" {
		drop(Compressed)
	}
	return stripped, compressed, nil
}

// CandidateFile is where Prepare puts candidate c in dir.
func CandidateFile(dir string, c Candidate) string { return filepath.Join(dir, string(c)) }
