// Package binopt makes binaries smaller (strip, then UPX) and proves each
// result still runs before it replaces the original: it works on copies next
// to the destination and renames the chosen one into place, so a failure at
// any point leaves the original, never a half-written binary.
package binopt

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/emu-dev/emu/internal/proto"
)

// Compression methods.
const (
	CompressUPX  = "upx"
	CompressNone = "none"
)

// LevelBest asks UPX for --best (tries every method; slow).
const LevelBest = 10

// DefaultVerifyTimeout bounds one verify run when Verify.Timeout is 0.
const DefaultVerifyTimeout = 30 * time.Second

// Options say what Optimize does. The zero value strips nothing and
// compresses nothing; start from Defaults.
type Options struct {
	// Arch is the target's architecture, "amd64" or "arm64" (default: the
	// host's).
	Arch string
	// Strip removes symbols (strip --strip-all).
	Strip bool
	// Compress is CompressUPX or CompressNone ("" is none).
	Compress string
	// Level is UPX's level, 1 to 9, or LevelBest; 0 means 9.
	Level int
	// LZMA makes UPX use LZMA: smaller, slower to start.
	LZMA bool
	// Verify, when set, runs every candidate; only those that pass can be
	// chosen. Without it nothing is run and the smallest result is kept
	// (a UPX result still passes upx -t first).
	Verify *Verify
	// Verifier runs the candidates (default: HostVerifier, on this machine).
	Verifier Verifier
	// UPX and StripTool are the tools' paths (defaults: FindUPX, "strip").
	UPX, StripTool string
	// DryRun leaves dst untouched: the report says what would be chosen.
	DryRun bool
}

// Defaults returns strip + UPX -9 for the host's arch.
func Defaults() Options {
	return Options{Arch: runtime.GOARCH, Strip: true, Compress: CompressUPX, Level: 9}
}

// Verify is how a binary proves it still runs.
type Verify struct {
	Args     []string
	ExitCode int
	// Output, when set, must appear in the combined stdout and stderr.
	Output  string
	Timeout time.Duration
}

func (o Options) validate() error {
	switch o.Compress {
	case "", CompressNone, CompressUPX:
	default:
		return fmt.Errorf("unknown compression %q: want upx or none", o.Compress)
	}
	if o.Level < 0 || o.Level > LevelBest {
		return fmt.Errorf("UPX level %d out of range: want 1 to 9, or %d for --best", o.Level, LevelBest)
	}
	if o.Verify != nil && o.Verify.Timeout < 0 {
		return fmt.Errorf("verify timeout %s is negative", o.Verify.Timeout)
	}
	return nil
}

// upxArgs returns UPX's flags for the options.
func (o Options) upxArgs() []string {
	var args []string
	switch {
	case o.Level == LevelBest:
		args = append(args, "--best")
	case o.Level == 0:
		args = append(args, "-9")
	default:
		args = append(args, fmt.Sprintf("-%d", o.Level))
	}
	if o.LZMA {
		args = append(args, "--lzma")
	}
	return append(args, "-q", "--no-progress")
}

// Candidate names one of the files Optimize chooses among.
type Candidate string

// Candidates, from the largest to the smallest.
const (
	Original   Candidate = "original"
	Stripped   Candidate = "stripped"
	Compressed Candidate = "compressed"
)

// Report is what Optimize did with one file. Sizes are 0 for a candidate
// that was not made.
type Report struct {
	Path       string    `json:"path"`
	Kind       Kind      `json:"kind"`
	Original   int64     `json:"original"`
	Stripped   int64     `json:"stripped,omitempty"`
	Compressed int64     `json:"compressed,omitempty"`
	Chosen     Candidate `json:"chosen"`
	// Verified is true when the chosen file passed Verify.
	Verified bool          `json:"verified"`
	Checks   []proto.Check `json:"checks,omitempty"`
	// Reason says why the chosen file is not the smallest one attempted,
	// or why the file was skipped; empty when all went to plan.
	Reason   string        `json:"reason,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Size returns the chosen file's size.
func (r Report) Size() int64 {
	switch r.Chosen {
	case Stripped:
		return r.Stripped
	case Compressed:
		return r.Compressed
	}
	return r.Original
}

// Ratio is the chosen size over the original's (1 when nothing changed).
func (r Report) Ratio() float64 {
	if r.Original == 0 {
		return 1
	}
	return float64(r.Size()) / float64(r.Original)
}

// Check returns the verify run of candidate c, if there was one.
func (r Report) Check(c Candidate) (proto.Check, bool) {
	for _, ch := range r.Checks {
		if Candidate(ch.Candidate) == c {
			return ch, true
		}
	}
	return proto.Check{}, false
}

// ErrNoUPX means compression was asked for and no UPX was found.
var ErrNoUPX = errors.New("upx not found")

// ErrOriginalFails means not even the original passes its verify: the
// verify settings, or the binary itself, are wrong. The original is kept.
var ErrOriginalFails = errors.New("the original fails its verify too")

// notes collects the reasons behind a report, in order.
type notes []string

func (n *notes) add(format string, args ...any) { *n = append(*n, fmt.Sprintf(format, args...)) }
func (n notes) String() string                  { return strings.Join(n, "; ") }
