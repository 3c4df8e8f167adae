package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emu-dev/emu/internal/binopt"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
)

// binaries is the build's share of files[].optimize. The inject stage makes
// each file's candidates on the host (strip, UPX: tools the guest lacks) and
// lays them out in the tree under proto.OptimizeDir; the guest runs them
// where they will run, installs the first that passes its verify before the
// services start, and reports its choice, which lands in the manifest.
type binaries struct {
	// items go with the provision request.
	items []proto.Binary
	// at maps a file's guest path to its report in the manifest.
	at map[string]int
	// budget is the longest the guest's verify runs may take together.
	budget time.Duration
}

// binoptCacheVersion changes when the candidates made for the same input
// would differ.
const binoptCacheVersion = "emu-binopt-v1"

// optimizeFile makes the candidates for files[i], already in the tree at
// f.Dst with mode, and hands them to the guest; a file without a verify
// needs no run, so its smallest candidate is installed here.
func (b *builder) optimizeFile(ctx context.Context, tree string, i int, f spec.File, src string, mode os.FileMode) error {
	start := time.Now()
	opts := binopt.FromSpec(f.Optimize, b.opts.Stack.Base.Arch)
	p, cached, err := b.candidates(ctx, src, opts)
	if err != nil {
		return fmt.Errorf("optimize %s: %w", f.Src, err)
	}
	rep := p.Report
	rep.Path = f.Dst
	rep.Duration = time.Since(start)
	made := p.Made()
	switch {
	case rep.Kind != binopt.Executable:
		b.emit(event.New(event.Log, "inject", fmt.Sprintf("%s: not optimized: %s", f.Dst, rep.Reason)).With(proto.FieldKind, string(rep.Kind)))
	case len(made) == 0:
		b.emit(event.New(event.Log, "inject", fmt.Sprintf("%s: not optimized: nothing smaller: %s", f.Dst, rep.Reason)))
	case opts.Verify == nil:
		// UPX's output passed upx -t; without a verify that is all there is.
		if err := copyFile(p.Path(made[0]), filepath.Join(tree, f.Dst), mode); err != nil {
			return fmt.Errorf("optimize %s: install the %s file: %w", f.Dst, made[0], err)
		}
		rep.Chosen = made[0]
		b.emit(event.New(event.Log, "inject", fmt.Sprintf("%s: installed the %s file, unverified (no optimize.verify): %s", f.Dst, made[0], sizes(rep, cached))))
	default:
		item := proto.Binary{Dst: f.Dst, Verify: &proto.Verify{
			Args: opts.Verify.Args, ExitCode: opts.Verify.ExitCode, Output: opts.Verify.Output, Timeout: opts.Verify.Timeout,
		}}
		if item.Verify.Timeout <= 0 {
			item.Verify.Timeout = binopt.DefaultVerifyTimeout
		}
		for _, c := range made {
			guest := path.Join(proto.OptimizeDir, strconv.Itoa(i), string(c), path.Base(f.Dst))
			if err := copyFile(p.Path(c), filepath.Join(tree, guest), mode); err != nil {
				return fmt.Errorf("optimize %s: add the %s file: %w", f.Dst, c, err)
			}
			item.Candidates = append(item.Candidates, proto.Candidate{Name: string(c), Path: guest})
		}
		// The original stays until the guest says otherwise.
		rep.Chosen = binopt.Original
		if b.bins.at == nil {
			b.bins.at = map[string]int{}
		}
		b.bins.at[f.Dst] = len(b.man.Binaries)
		b.bins.items = append(b.bins.items, item)
		b.bins.budget += time.Duration(len(made)+1) * item.Verify.Timeout
		b.emit(event.New(event.Log, "inject", fmt.Sprintf("%s: %s; the guest verifies them", f.Dst, sizes(rep, cached))))
	}
	b.man.Binaries = append(b.man.Binaries, rep)
	return nil
}

func sizes(r binopt.Report, cached bool) string {
	s := fmt.Sprintf("%d bytes", r.Original)
	if r.Stripped > 0 {
		s += fmt.Sprintf(", stripped %d", r.Stripped)
	}
	if r.Compressed > 0 {
		s += fmt.Sprintf(", compressed %d", r.Compressed)
	}
	if cached {
		s += " (cached)"
	}
	return s
}

// observe records the guest's choice for an optimized file in the manifest.
func (b *builder) observe(e event.Event) {
	if e.Kind != event.Log || e.Name != proto.OptimizeStage || len(e.Data) == 0 {
		return
	}
	var c proto.BinaryChoice
	if err := e.DecodeData(&c); err != nil {
		b.emit(event.New(event.Log, "provision", "unreadable optimize report from the guest: "+err.Error()))
		return
	}
	i, ok := b.bins.at[c.Dst]
	if !ok {
		return
	}
	r := &b.man.Binaries[i]
	r.Chosen = binopt.Candidate(c.Chosen)
	r.Verified = c.Verified
	for _, ch := range c.Checks {
		r.Duration += ch.Duration
	}
	r.Checks = append(r.Checks, c.Checks...)
	if c.Reason != "" {
		r.Reason = strings.TrimPrefix(r.Reason+"; "+c.Reason, "; ")
	}
}

// candidates returns src's candidates from the cache, making them first
// when needed: UPX -9 takes seconds on a large binary, and most rebuilds
// have it unchanged. Failures (no UPX, a canceled build) are not cached.
func (b *builder) candidates(ctx context.Context, src string, opts binopt.Options) (binopt.Prepared, bool, error) {
	key, err := candidateKey(src, opts)
	if err != nil {
		return binopt.Prepared{}, false, err
	}
	root := filepath.Join(b.opts.Home.Cache, "binopt")
	dir := filepath.Join(root, key)
	if p, err := loadPrepared(dir); err == nil {
		return p, true, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return binopt.Prepared{}, false, err
	}
	tmp, err := os.MkdirTemp(root, ".tmp-")
	if err != nil {
		return binopt.Prepared{}, false, err
	}
	defer os.RemoveAll(tmp)
	p, err := binopt.Prepare(ctx, b.opts.Runner, src, tmp, opts)
	if err != nil {
		return p, false, err
	}
	rj, err := json.Marshal(p.Report)
	if err != nil {
		return p, false, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "report.json"), rj, 0o600); err != nil {
		return p, false, err
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return p, false, fmt.Errorf("cache candidates: %w", err)
	}
	// Ours, or an identical set another build renamed into place first.
	p, err = loadPrepared(dir)
	return p, false, err
}

// loadPrepared reads a cache entry: its report, and the candidates present.
func loadPrepared(dir string) (binopt.Prepared, error) {
	var p binopt.Prepared
	rj, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(rj, &p.Report); err != nil {
		return p, fmt.Errorf("cache entry %s: %w", dir, err)
	}
	for _, c := range []binopt.Candidate{binopt.Stripped, binopt.Compressed} {
		f := binopt.CandidateFile(dir, c)
		if _, err := os.Stat(f); err == nil {
			if c == binopt.Stripped {
				p.Stripped = f
			} else {
				p.Compressed = f
			}
		}
	}
	return p, nil
}

// candidateKey digests what the candidates are made from: the file's bytes
// and the options that shape them.
func candidateKey(src string, opts binopt.Options) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\narch=%s strip=%t compress=%s level=%d lzma=%t\n",
		binoptCacheVersion, opts.Arch, opts.Strip, opts.Compress, opts.Level, opts.LZMA)
	f, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
