package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emu-dev/emu/internal/binopt"
	"github.com/emu-dev/emu/internal/command"
)

func runOptimize(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "optimize", "[flags] FILE...")
	level := fs.Int("level", 9, "UPX compression `level`: 1 to 9, or 10 for --best")
	lzma := fs.Bool("lzma", false, "compress with LZMA (smaller, slower to start)")
	noStrip := fs.Bool("no-strip", false, "do not strip symbols")
	compress := fs.String("compress", binopt.CompressUPX, "compression: upx or none")
	verifyArgs := fs.String("verify", "", "run each result with these `ARGS` (split at spaces, no quoting) and keep only results that pass")
	expectExit := fs.Int("expect-exit", 0, "the exit `code` a passing run has")
	expectOutput := fs.String("expect-output", "", "a `substring` a passing run prints (stdout or stderr)")
	timeout := fs.Duration("timeout", binopt.DefaultVerifyTimeout, "how long one verify run may take")
	dryRun := fs.Bool("dry-run", false, "report what would be chosen; leave the files as they are")
	arch := fs.String("arch", runtime.GOARCH, "the architecture the files are for: amd64 or arm64")
	files, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usageError{errors.New("optimize: name at least one FILE")}
	}
	opts := binopt.Options{Arch: *arch, Strip: !*noStrip, Compress: *compress, Level: *level, LZMA: *lzma, DryRun: *dryRun}
	switch {
	case *compress != binopt.CompressUPX && *compress != binopt.CompressNone:
		return usageError{fmt.Errorf("--compress %s: want upx or none", *compress)}
	case *level < 1 || *level > binopt.LevelBest:
		return usageError{fmt.Errorf("--level %d: want 1 to 9, or 10 for --best", *level)}
	case *arch != "amd64" && *arch != "arm64":
		return usageError{fmt.Errorf("--arch %s: want amd64 or arm64", *arch)}
	case *timeout <= 0:
		return usageError{fmt.Errorf("--timeout %s: want a positive duration", *timeout)}
	case *noStrip && *compress == binopt.CompressNone:
		return usageError{errors.New("--no-strip with --compress none leaves nothing to do")}
	}
	verifySet := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "verify", "expect-exit", "expect-output":
			verifySet = true
		}
	})
	if verifySet {
		// strings.Fields: no quoting; a file's argument with spaces needs a wrapper script.
		opts.Verify = &binopt.Verify{Args: strings.Fields(*verifyArgs), ExitCode: *expectExit, Output: *expectOutput, Timeout: *timeout}
	} else if opts.Compress == binopt.CompressUPX || opts.Strip {
		fmt.Fprintln(e.stderr, "note: without --verify the results are not run; pass --verify ARGS to prove each one still works")
	}
	if opts.Compress == binopt.CompressUPX {
		if opts.UPX, err = binopt.FindUPX(); err != nil {
			return withHint{err: err, hint: "install it with scripts/install-deps, or pass --compress none"}
		}
	}

	var reports []binopt.Report
	failed := 0
	for _, f := range files {
		rep, err := binopt.Optimize(ctx, command.Exec{}, f, f, opts)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "emu: optimize %s: %v\n", f, err)
			if rep.Kind == "" {
				continue // never read: nothing to report
			}
		}
		reports = append(reports, rep)
	}
	writeOptimizeReport(e.stdout, reports, opts)
	if failed > 0 {
		return fmt.Errorf("%d of %d files could not be optimized (each kept as it was)", failed, len(files))
	}
	return nil
}

// writeOptimizeReport prints a table, then each file's reason.
func writeOptimizeReport(w io.Writer, reports []binopt.Report, opts binopt.Options) {
	if len(reports) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tORIGINAL\tSTRIPPED\tCOMPRESSED\tRATIO\tCHOSEN\tVERIFY\tTIME\t")
	for _, r := range reports {
		chosen := string(r.Chosen)
		if r.Kind != binopt.Executable {
			chosen = "skipped"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t\n", r.Path, humanSize(r.Original), humanSize(r.Stripped),
			humanSize(r.Compressed), r.Ratio(), chosen, verifyCell(r, opts), r.Duration.Round(time.Millisecond))
	}
	tw.Flush()
	for _, r := range reports {
		if r.Reason != "" {
			fmt.Fprintf(w, "%s: %s\n", r.Path, r.Reason)
		}
	}
	if opts.DryRun {
		fmt.Fprintln(w, "dry run: no file was changed")
	}
}

func verifyCell(r binopt.Report, opts binopt.Options) string {
	switch {
	case r.Kind != binopt.Executable:
		return "-"
	case opts.Verify == nil:
		return "not run"
	case r.Verified:
		return "passed"
	}
	return "failed"
}

// humanSize prints a byte count in MiB or KiB; "-" for 0 (not made).
func humanSize(n int64) string {
	switch {
	case n == 0:
		return "-"
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
