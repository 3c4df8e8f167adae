package oci

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/emu-dev/emu/internal/event"
)

// Options are what push and pull share: how to reach the registry, and
// where progress goes.
type Options struct {
	// Insecure allows plain HTTP to any registry; without it only a
	// registry on the loopback (localhost, 127.0.0.0/8, ::1) may be
	// reached without TLS.
	Insecure bool
	// Keychain finds credentials; nil is Docker's config.json
	// (DOCKER_CONFIG, else ~/.docker) and its credential helpers.
	Keychain authn.Keychain
	// Transport carries the requests; nil is a clone of
	// http.DefaultTransport.
	Transport http.RoundTripper
	// UserAgent names emu to the registry.
	UserAgent string
	// Sink receives the transfer's events; nil discards them.
	Sink event.Sink
	// Idle bounds every wait on the registry: for a response's headers,
	// and between two reads of a blob. 0 is DefaultIdle.
	Idle time.Duration
}

// DefaultIdle is how long a registry may send nothing before emu gives up
// on the request: a dead connection fails instead of hanging the pull.
const DefaultIdle = 60 * time.Second

func (o Options) idle() time.Duration {
	if o.Idle > 0 {
		return o.Idle
	}
	return DefaultIdle
}

func (o Options) emit(e event.Event) {
	if o.Sink != nil {
		o.Sink.Emit(e)
	}
}

// parseRef parses ref; --insecure makes a registry's plain HTTP endpoint
// acceptable to go-containerregistry's own scheme choice.
func (o Options) parseRef(ref string) (name.Reference, error) {
	var opts []name.Option
	if o.Insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, &Error{Op: "parse reference", Ref: ref, Err: err,
			Hint: "a reference looks like ghcr.io/OWNER/NAME:TAG or localhost:5000/NAME:TAG"}
	}
	return r, nil
}

// transport is the guarded round tripper every request goes through.
func (o Options) transport() http.RoundTripper {
	next := o.Transport
	if next == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = o.idle()
		next = t
	}
	return plainHTTPGuard{next: next, insecure: o.Insecure}
}

func (o Options) keychain() authn.Keychain {
	if o.Keychain != nil {
		return o.Keychain
	}
	return authn.DefaultKeychain
}

func (o Options) remote(ctx context.Context) []remote.Option {
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(o.keychain()),
		remote.WithTransport(o.transport()),
	}
	if o.UserAgent != "" {
		opts = append(opts, remote.WithUserAgent(o.UserAgent))
	}
	return opts
}

// plainHTTPGuard refuses plain HTTP to a registry off the loopback unless
// --insecure was given. go-containerregistry would otherwise fall back to
// HTTP for private (RFC 1918) addresses by itself.
type plainHTTPGuard struct {
	next     http.RoundTripper
	insecure bool
}

func (g plainHTTPGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !g.insecure && !loopback(r.URL.Hostname()) {
		return nil, &PlainHTTPError{Host: r.URL.Host}
	}
	return g.next.RoundTrip(r)
}

// loopback reports whether host is this machine.
func loopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// PlainHTTPError is a registry reached without TLS, off the loopback,
// without --insecure.
type PlainHTTPError struct{ Host string }

func (e *PlainHTTPError) Error() string {
	return fmt.Sprintf("plain HTTP to %s refused: only registries on localhost may be reached without TLS", e.Host)
}

// HintText says how to allow it.
func (e *PlainHTTPError) HintText() string {
	return "if this registry really has no TLS, pass --insecure"
}

// Error is a failed registry operation, with a hint for the user where
// one is known.
type Error struct {
	Op   string // "push", "pull", "fetch blob disk.tar.zst", ...
	Ref  string
	Err  error
	Hint string
}

func (e *Error) Error() string {
	if e.Ref == "" {
		return fmt.Sprintf("%s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("%s %s: %v", e.Op, e.Ref, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// HintText is what to do next.
func (e *Error) HintText() string { return e.Hint }

// wrap names op and ref in err and adds the hint its kind calls for:
// credentials, permissions, a reference that does not exist, TLS.
func wrap(op, ref string, reg name.Registry, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	e := &Error{Op: op, Ref: ref, Err: err}
	var te *transport.Error
	var hinted interface{ HintText() string }
	switch {
	case errors.As(err, &hinted) && hinted.HintText() != "":
		// PlainHTTPError, PlatformError, or the caller's own (CanReplace).
		e.Hint = hinted.HintText()
	case op == "pull" && errors.Is(err, context.Canceled):
		e.Hint = "run the same pull again: it keeps the blobs it finished and resumes the one it was fetching"
	case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || hasCode(te, transport.UnauthorizedErrorCode)):
		e.Err = fmt.Errorf("%s asks for credentials, and none that it accepts were found: %w", reg.RegistryStr(), err)
		e.Hint = fmt.Sprintf("log in with `docker login %s` (or podman login, oras login): emu reads Docker's config.json (DOCKER_CONFIG, else ~/.docker) and its credential helpers", reg.RegistryStr())
	case errors.As(err, &te) && (te.StatusCode == http.StatusForbidden || hasCode(te, transport.DeniedErrorCode)):
		e.Hint = "the account you are logged in with may not " + op + " here: check its permissions for the repository"
	case errors.As(err, &te) && (te.StatusCode == http.StatusNotFound || hasCode(te, transport.ManifestUnknownErrorCode) || hasCode(te, transport.NameUnknownErrorCode)):
		e.Err = fmt.Errorf("not found in the registry: %w", err)
		e.Hint = "check the reference's repository and tag (emu push REF puts a bundle there)"
	case errors.Is(err, http.ErrSchemeMismatch) || strings.Contains(err.Error(), http.ErrSchemeMismatch.Error()):
		e.Hint = "the registry speaks plain HTTP; pass --insecure if that is intended"
	}
	return e
}

func hasCode(te *transport.Error, code transport.ErrorCode) bool {
	for _, d := range te.Errors {
		if d.Code == code {
			return true
		}
	}
	return false
}
