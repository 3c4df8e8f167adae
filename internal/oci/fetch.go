package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// copyBuffer is the size of a download's reads and writes.
const copyBuffer = 1 << 20

// download fetches l into dst through dst.partial, resuming what a pull
// cut short left there, hashing as it writes. Bytes that do not match the
// digest are removed: a resume could never mend them.
func download(ctx context.Context, f *fetcher, bp *blobProgress, dst string, l v1.Descriptor) error {
	partial := dst + ".partial"
	pf, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", partial, err)
	}
	defer pf.Close()
	h := sha256.New()
	have, err := io.Copy(h, pf)
	if err != nil {
		return fmt.Errorf("read %s: %w", partial, err)
	}
	if have > l.Size {
		if err := pf.Truncate(0); err != nil {
			return err
		}
		h.Reset()
		have = 0
	}
	bp.resume(have)
	w := &offsetWriter{f: pf, off: have, synced: have}
	ah := newAsyncHash(h)
	defer ah.Close()
	sum := func() string { return hex.EncodeToString(ah.Sum()) }
	if have < l.Size {
		restart := func() error {
			ah.Reset()
			w.off, w.synced = 0, 0
			return pf.Truncate(0)
		}
		if err := f.fetchFrom(ctx, l, have, io.MultiWriter(w, ah, bp), restart); err != nil {
			return err
		}
	}
	if w.off != l.Size {
		return fmt.Errorf("got %d bytes, want %d", w.off, l.Size)
	}
	if got := sum(); got != l.Digest.Hex {
		pf.Close()
		os.Remove(partial)
		return &DigestError{Digest: l.Digest.String(), Got: "sha256:" + got}
	}
	if err := pf.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", partial, err)
	}
	if err := os.Rename(partial, dst); err != nil {
		return fmt.Errorf("place blob %s: %w", dst, err)
	}
	return nil
}

// DigestError is a blob whose bytes do not match its digest.
type DigestError struct{ Digest, Got string }

func (e *DigestError) Error() string {
	return fmt.Sprintf("content does not match its digest %s (got %s): the registry or something between served other bytes", e.Digest, e.Got)
}

// offsetWriter writes to f from off on, and starts the writeback of every
// writebackEvery bytes as they come, so that the final fsync is short.
type offsetWriter struct {
	f      *os.File
	off    int64
	synced int64 // writeback started up to here
}

// writebackEvery is how many written bytes make the writeback start.
const writebackEvery = 16 << 20

func (w *offsetWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	if w.off-w.synced >= writebackEvery {
		startWriteback(w.f, w.synced, w.off-w.synced)
		w.synced = w.off
	}
	return n, err
}

// fetcher downloads blobs of one repository with go-containerregistry's
// authenticated transport, by Range when resuming.
type fetcher struct {
	client *http.Client
	repo   name.Repository
	idle   time.Duration // the most a blob's body may pause
	scheme string        // chosen at the first request: https, or http where allowed
	plain  bool          // http may be tried
}

func newFetcher(ctx context.Context, o Options, repo name.Repository) (*fetcher, error) {
	reg := repo.Registry
	auth, err := o.keychain().Resolve(reg)
	if err != nil {
		return nil, fmt.Errorf("find credentials for %s: %w", reg.RegistryStr(), err)
	}
	rt, err := transport.NewWithContext(ctx, reg, auth, o.transport(), []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	if o.UserAgent != "" {
		rt = transport.NewUserAgent(rt, o.UserAgent)
	}
	return &fetcher{
		client: &http.Client{Transport: rt},
		repo:   repo,
		idle:   o.idle(),
		scheme: "https",
		plain:  o.Insecure || loopback(hostOf(reg.RegistryStr())),
	}, nil
}

// hostOf is the host of a registry's host[:port].
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// fetch writes blob d to w, verified against its digest and size.
func (f *fetcher) fetch(ctx context.Context, d v1.Descriptor, w io.Writer, restart func() error) error {
	h := sha256.New()
	n := &countWriter{}
	if err := f.fetchFrom(ctx, d, 0, io.MultiWriter(w, h, n), restart); err != nil {
		return err
	}
	if n.n != d.Size {
		return fmt.Errorf("blob %s: got %d bytes, want %d", d.Digest, n.n, d.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Digest.Hex {
		return fmt.Errorf("blob %s: %w", d.Digest, &DigestError{Digest: d.Digest.String(), Got: "sha256:" + got})
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// fetchFrom GETs blob d from byte offset on and copies at most the rest of
// it to w. A registry that ignores the Range answers with the whole blob:
// restart is called first, to drop what w got before.
func (f *fetcher) fetchFrom(ctx context.Context, d v1.Descriptor, offset int64, w io.Writer, restart func() error) error {
	// A registry that stops sending ends the request, not the pull's
	// patience: the watchdog cancels it after f.idle without a byte.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := errStalled(f.idle)
	watchdog := time.AfterFunc(f.idle, func() { cancel(stalled) })
	defer watchdog.Stop()
	err := f.copyFrom(ctx, d, offset, w, restart, watchdog)
	if err := stallCause(ctx, stalled, err); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	return nil
}

// errStalled is a registry that went quiet for idle.
func errStalled(idle time.Duration) error {
	return fmt.Errorf("the registry sent nothing for %s", idle)
}

// stallCause returns stalled when the watchdog (ctx's cause) or the
// transport's own header timeout ended the request, else err.
func stallCause(ctx context.Context, stalled, err error) error {
	var ne net.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(context.Cause(ctx), stalled):
		return stalled
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %w", stalled, err)
	}
	return err
}

// copyFrom is fetchFrom's request and copy; every read resets watchdog.
func (f *fetcher) copyFrom(ctx context.Context, d v1.Descriptor, offset int64, w io.Writer, restart func() error, watchdog *time.Timer) error {
	resp, err := f.get(ctx, d, offset)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0 && restart != nil {
		// A registry that refuses the range: the whole blob, then.
		resp.Body.Close()
		if err := restart(); err != nil {
			return err
		}
		offset = 0
		if resp, err = f.get(ctx, d, 0); err != nil {
			return err
		}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
	case resp.StatusCode == http.StatusOK:
		if offset > 0 {
			if restart == nil {
				return fmt.Errorf("the registry ignored the range request")
			}
			if err := restart(); err != nil {
				return err
			}
			offset = 0
		}
	default:
		return transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
	}
	// One byte more than expected shows a blob that is too long. Large
	// reads and writes: 32 KiB ones cost a third of a pull's time in
	// system calls (BenchmarkPushPull).
	body := &idleReader{r: resp.Body, watchdog: watchdog, idle: f.idle}
	if _, err := io.CopyBuffer(w, io.LimitReader(body, d.Size-offset+1), make([]byte, copyBuffer)); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	return nil
}

func (f *fetcher) get(ctx context.Context, d v1.Descriptor, offset int64) (*http.Response, error) {
	do := func(scheme string) (*http.Response, error) {
		u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", scheme, f.repo.RegistryStr(), f.repo.RepositoryStr(), d.Digest)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		if offset > 0 {
			// With its end: go-containerregistry's own registry does not
			// understand an open range ("bytes=N-").
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, d.Size-1))
		}
		return f.client.Do(req)
	}
	resp, err := do(f.scheme)
	if err != nil && f.scheme == "https" && f.plain && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		// No TLS on a registry where plain HTTP is allowed: keep to HTTP.
		if r2, err2 := do("http"); err2 == nil {
			f.scheme = "http"
			return r2, nil
		}
	}
	return resp, err
}

// idleReader resets its watchdog whenever bytes arrive.
type idleReader struct {
	r        io.Reader
	watchdog *time.Timer
	idle     time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.watchdog.Reset(r.idle)
	}
	return n, err
}
