// Package ports plans the host side of each service's forwarded guest TCP
// ports, applies overrides from the environment and the --port flag, and
// checks before boot that every host port is free, naming whoever holds one
// that is not.
package ports

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
)

// EnvPrefix starts the environment variables that override host ports:
// EMU_PORT_<SERVICE>_<NAME>=PORT or EMU_PORT_<SERVICE>=PORT.
const EnvPrefix = "EMU_PORT_"

// Override sets the host port of one forward.
type Override struct {
	// Key names the port: "SERVICE.NAME", "SERVICE" (when it has one port)
	// or "NAME" (when unique across services). For an override from the
	// environment it is the variable's suffix instead ("API_HTTP"), which
	// matches SERVICE_NAME or SERVICE upper-cased with '-' as '_'.
	Key  string
	Host int
	// Env is the variable the override came from; empty for --port.
	Env string
}

// String names the override as the user wrote it, for errors.
func (o Override) String() string {
	if o.Env != "" {
		return fmt.Sprintf("%s=%d", o.Env, o.Host)
	}
	return fmt.Sprintf("--port %s=%d", o.Key, o.Host)
}

// ParseOverride parses a --port value: "api.http=28080", "http=28080",
// "postgres=25432".
func ParseOverride(s string) (Override, error) {
	key, val, ok := strings.Cut(s, "=")
	if !ok {
		return Override{}, fmt.Errorf("parse port override %q: want KEY=PORT, such as api.http=28080", s)
	}
	key = strings.ToLower(strings.TrimSpace(key))
	if err := checkKey(key); err != nil {
		return Override{}, fmt.Errorf("parse port override %q: %w", s, err)
	}
	host, err := parsePort(val)
	if err != nil {
		return Override{}, fmt.Errorf("parse port override %q: %w", s, err)
	}
	return Override{Key: key, Host: host}, nil
}

func checkKey(key string) error {
	parts := strings.Split(key, ".")
	if len(parts) > 2 {
		return fmt.Errorf("invalid key %q: want SERVICE.NAME, SERVICE or NAME", key)
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return fmt.Errorf("invalid key %q: want SERVICE.NAME, SERVICE or NAME (lowercase letters, digits and '-')", key)
		}
	}
	return nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("invalid port %q: want a number from 1 to 65535", s)
	}
	if err := checkRange(n); err != nil {
		return 0, err
	}
	return n, nil
}

func checkRange(n int) error {
	if n < 1 || n > 65535 {
		return fmt.Errorf("port %d out of range 1..65535", n)
	}
	return nil
}

// FromEnv returns the overrides set by EMU_PORT_* variables in environ
// (KEY=VALUE entries, as from os.Environ), sorted by variable name so that
// EMU_PORT_API_HTTP comes after, and so beats, EMU_PORT_API. It reports every
// malformed variable.
func FromEnv(environ []string) ([]Override, error) {
	var out []Override
	var errs []error
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		key, ok := strings.CutPrefix(name, EnvPrefix)
		if !ok {
			continue
		}
		key = strings.ToUpper(key)
		if key == "" || strings.Trim(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
			errs = append(errs, fmt.Errorf("read %s: want %sSERVICE_NAME or %sSERVICE (letters, digits and '_')", name, EnvPrefix, EnvPrefix))
			continue
		}
		host, err := parsePort(val)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", name, err))
			continue
		}
		out = append(out, Override{Key: key, Host: host, Env: name})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortStableFunc(out, func(a, b Override) int { return cmp.Compare(a.Env, b.Env) })
	return out, nil
}

// Service is a service's name and ports, as the stack file gives them.
type Service struct {
	Name  string
	Ports []spec.Port
}

// FromStack returns the stack's services with ports, sorted by name.
func FromStack(st *spec.Stack) []Service {
	var out []Service
	for _, name := range st.ServiceNames() {
		if ps := st.Services[name].Ports; len(ps) > 0 {
			out = append(out, Service{Name: name, Ports: ps})
		}
	}
	return out
}

// Plan returns the forwards of services, in their order: host ports from the
// stack file (the guest port when not given), then overrides in order, the
// later winning; pass environment overrides before flag ones. It reports
// every problem: an override matching no port or several, a port out of
// range, two forwards on one host port.
func Plan(services []Service, overrides []Override) ([]proto.Forward, error) {
	var fwds []proto.Forward
	var errs []error
	for _, svc := range services {
		for _, p := range svc.Ports {
			f := proto.Forward{Service: svc.Name, Name: p.Name, Guest: p.Guest, Host: p.Host}
			if f.Name == "" {
				f.Name = spec.PortName(p)
			}
			if f.Host == 0 {
				f.Host = f.Guest
			}
			if err := checkRange(f.Guest); err != nil {
				errs = append(errs, fmt.Errorf("%s: guest %w", f.Label(), err))
			}
			fwds = append(fwds, f)
		}
	}
	for _, o := range overrides {
		i, err := match(fwds, o)
		if err == nil {
			err = checkRange(o.Host)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o, err))
			continue
		}
		fwds[i].Host = o.Host
	}
	byHost := map[int]int{}
	for i, f := range fwds {
		if err := checkRange(f.Host); err != nil {
			if f.Host != f.Guest { // else reported as the guest port
				errs = append(errs, fmt.Errorf("%s: host %w", f.Label(), err))
			}
			continue
		}
		if j, dup := byHost[f.Host]; dup {
			errs = append(errs, fmt.Errorf("host port %d is used by both %s and %s: give one another port with --port %s=PORT", f.Host, fwds[j].Label(), f.Label(), f.Key()))
			continue
		}
		byHost[f.Host] = i
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return fwds, nil
}

// match returns the index of the one forward o names.
func match(fwds []proto.Forward, o Override) (int, error) {
	var hits []int
	for i, f := range fwds {
		if matches(f, o) {
			hits = append(hits, i)
		}
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		keys := make([]string, len(fwds))
		for i, f := range fwds {
			keys[i] = f.Key()
		}
		if len(keys) == 0 {
			return 0, fmt.Errorf("no port matches %q: the stack forwards no ports", o.Key)
		}
		return 0, fmt.Errorf("no port matches %q (ports: %s)", o.Key, strings.Join(keys, ", "))
	default:
		keys := make([]string, len(hits))
		for i, h := range hits {
			keys[i] = fwds[h].Key()
		}
		return 0, fmt.Errorf("%q matches several ports (%s): name one as SERVICE.NAME", o.Key, strings.Join(keys, ", "))
	}
}

// matches reports whether o names f. A bare key naming a service matches all
// of its ports, so a service with several is ambiguous rather than unknown.
func matches(f proto.Forward, o Override) bool {
	if o.Env != "" {
		svc := envName(f.Service)
		return o.Key == svc || o.Key == svc+"_"+envName(f.Name)
	}
	if svc, name, ok := strings.Cut(o.Key, "."); ok {
		return svc == f.Service && name == f.Name
	}
	return o.Key == f.Service || o.Key == f.Name
}

func envName(s string) string { return strings.ReplaceAll(strings.ToUpper(s), "-", "_") }
