package binopt

import "github.com/emu-dev/emu/internal/spec"

// FromSpec turns a stack file's files[].optimize into Options for arch.
// The caller sets Verifier (the guest, in a build), and the tools' paths.
func FromSpec(o spec.Optimize, arch string) Options {
	opts := Options{Arch: arch, Strip: o.Strip, Compress: o.Compress, Level: o.Level, LZMA: o.LZMA}
	if !o.Enabled {
		opts.Strip, opts.Compress = false, CompressNone
	}
	if v := o.Verify; v != nil {
		opts.Verify = &Verify{Args: v.Args, ExitCode: v.Exit, Output: v.Output, Timeout: v.Timeout.D()}
	}
	return opts
}
