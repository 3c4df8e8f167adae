package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/ports"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/store"
)

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runUp(ctx context.Context, e *env, args []string) error {
	var jsonOut, noBuild, cold *bool
	var accelFlag *string
	var timeout *time.Duration
	var portFlags, envFlags listFlag
	var pf pullFlags
	home, t, err := instanceFlags(ctx, e, "up", "[-f FILE | IMAGE | NAME | REF] [flags]", args, func(fs *flag.FlagSet) {
		pf = addPullFlags(fs)
		jsonOut = fs.Bool("json", false, "print events as JSON lines on stdout")
		accelFlag = fs.String("accel", "", "accelerator: kvm, hvf or tcg (default: probe)")
		timeout = fs.Duration("timeout", 0, "bound the wait for every service healthy (default 3m, scaled under tcg)")
		noBuild = fs.Bool("no-build", false, "run the image as it is, even when the stack file changed since it was built")
		cold = fs.Bool("cold", false, "boot the guest: discard a suspended state (as a power cut would) and do not start from the image's ready snapshot")
		fs.Var(&portFlags, "port", "host port for a service's port: `SERVICE.NAME=PORT` (repeatable; also EMU_PORT_SERVICE_NAME)")
		fs.Var(&envFlags, "e", "environment for the stack's services: `KEY=VALUE` (repeatable)")
	})
	if err != nil {
		return err
	}
	if t.ref != "" {
		// up REF: the image pulled from REF, pulled now when missing.
		if t, err = upFromRef(ctx, e, home, t, pf, *jsonOut); err != nil {
			return err
		}
	} else if *pf.name != "" || *pf.arch != "" {
		return usageError{errors.New("--name and --arch are for emu up REF (an image in a registry)")}
	} else if t.stack != nil {
		if t, err = hostArchTarget(e, home, t); err != nil {
			return err
		}
	} else {
		t = hostArchNamed(e, home, t)
	}
	env := map[string]string{}
	for _, kv := range envFlags {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageError{fmt.Errorf("-e %s: want KEY=VALUE", kv)}
		}
		env[k] = v
	}
	inst := home.Instance(t.name)
	release, err := instance.Lock(inst)
	if err != nil {
		return err
	}
	defer release()
	if pid, err := instance.RunningPID(inst); err == nil {
		full := false
		if st, err := instance.QEMUStatus(ctx, inst.QMP()); err == nil && st == "io-error" {
			full = true
		}
		if was, err := instance.Unpause(ctx, inst); was && full {
			fmt.Fprintf(e.stderr, "%s was paused: its disk found the host filesystem full; retrying its writes\n", t.name)
		} else if was {
			fmt.Fprintf(e.stderr, "%s was paused by an interrupted suspend: running it again\n", t.name)
		} else if err != nil {
			e.log.Debug("check whether the guest is paused", "err", err)
		}
		fmt.Fprintf(e.stderr, "%s is already running (pid %d)\n", t.name, pid)
		rep := report(ctx, home, t.name)
		return writeReports(e, []instanceReport{rep}, *jsonOut)
	}
	if t.stack != nil && !*noBuild {
		if err := ensureBundle(ctx, e, home, inst, t, *jsonOut, *accelFlag); err != nil {
			return err
		}
	}
	man, err := bundle.Read(t.bundle)
	if err != nil {
		return withHint{err: err, hint: "build the image first: emu build -f emu.yaml"}
	}
	fwds, err := planPorts(man, portFlags)
	if err != nil {
		return err
	}
	if err := ports.Check(fwds); err != nil {
		return err
	}
	choice, err := checkHost(ctx, e, home, "", man.Arch, *accelFlag, false)
	if err != nil {
		return err
	}
	var mports []proto.Forward
	for _, f := range fwds {
		mports = append(mports, proto.Forward{Service: f.Service, Name: f.Name, Guest: f.Guest, Host: f.Host})
	}
	view, mode := e.newView(*jsonOut)
	start := time.Now()
	info, err := instance.Up(ctx, instance.UpOptions{
		Instance: inst, DiskCache: home.DiskCache(), Bundle: t.bundle, Manifest: man, Accel: choice, Ports: mports,
		Env: env, Connect: connectTemplates(t, man), Timeout: *timeout, Sink: view, Log: e.log, Cold: *cold,
	})
	view.Close()
	if err != nil {
		return err
	}
	if mode == progress.JSON {
		return nil
	}
	tm := info.Timings
	switch info.Start {
	case instance.StartResumed, instance.StartTemplate:
		how := "resumed"
		if info.Start == instance.StartTemplate {
			how = "started from the image's ready snapshot"
		}
		fmt.Fprintf(e.stderr, "%s is ready in %s, %s (qemu start %s, restore %s, agent %s, services %s, emu %s; %s, pid %d)\n",
			t.name, progress.Dur(time.Since(start)), how, progress.Dur(tm.Start-tm.Restore), progress.Dur(tm.Restore),
			progress.Dur(tm.Hello), progress.Dur(tm.Services), progress.Dur(time.Since(start)-tm.Ready), info.Accel, info.PID)
	default:
		fmt.Fprintf(e.stderr, "%s is ready in %s (qemu start %s, boot to agent %s, services %s, emu %s; %s, pid %d)\n",
			t.name, progress.Dur(time.Since(start)), progress.Dur(tm.Start), progress.Dur(tm.Hello), progress.Dur(tm.Services),
			progress.Dur(time.Since(start)-tm.Ready-tm.Snapshot), info.Accel, info.PID)
	}
	writeTable(e.stdout, info.Ports, view.Status().Services)
	if len(info.Connect) > 0 {
		fmt.Fprintln(e.stdout)
		return writeEnv(e.stdout, info.Connect, "plain")
	}
	return nil
}

// connectTemplates are the stack file's connect templates when up runs
// from it, else those recorded in the bundle.
func connectTemplates(t target, man bundle.Manifest) map[string]string {
	if t.stack != nil {
		return t.stack.Connect
	}
	return man.Connect
}

// ensureBundle builds the stack when its bundle is missing or was built
// from other inputs, and says so. It refuses when the instance has data on
// top of the old image: a rebuild would pull that image from under it.
func ensureBundle(ctx context.Context, e *env, home store.Home, inst store.Instance, t target, jsonOut bool, accelFlag string) error {
	reason := ""
	man, err := bundle.Read(t.bundle)
	switch {
	case err != nil:
		reason = "no image yet"
	default:
		agentBin, err := e.agentBinary(home, t.stack.Base.Arch)
		if err != nil {
			return err
		}
		hash, err := build.InputHash(t.stack, agentBin)
		if err != nil {
			return err
		}
		if hash != man.InputHash {
			reason = "the stack file or its inputs changed since the image was built"
		}
	}
	if reason == "" {
		return nil
	}
	if _, err := os.Stat(inst.Overlay()); err == nil {
		return withHint{
			err:  fmt.Errorf("%s: %s, and the instance keeps data on top of the current image", t.name, reason),
			hint: "emu reset, then emu up, rebuilds and starts fresh (the data is lost); emu up --no-build runs the image you have",
		}
	}
	fmt.Fprintf(e.stderr, "building %s: %s\n", t.name, reason)
	_, err = buildStack(ctx, e, buildRequest{stack: t.stack, home: home, outDir: home.Images(), bundleName: filepath.Base(t.bundle), json: jsonOut, accel: accelFlag})
	return err
}

// hostArchTarget: up from a stack file runs the stack's image for this
// host's architecture when the store has one (NAME.ARCH, made by emu
// build --arch); else the stack's own, emulated, and says so.
func hostArchTarget(e *env, home store.Home, t target) (target, error) {
	host, own := runtime.GOARCH, t.stack.Base.Arch
	if own == host {
		return t, nil
	}
	dir := filepath.Join(home.Images(), store.BundleName(t.stack.Name, host, own))
	if _, err := bundle.Read(dir); err == nil {
		st, err := t.stack.ForArch(host)
		if err != nil {
			return t, err
		}
		t.stack, t.bundle = st, dir
		return t, nil
	}
	emulated(e, t.name, own, host)
	return t, nil
}

// hostArchNamed: up NAME, where the store's image NAME is for another
// architecture, runs NAME.ARCH, the same stack's image for this host, when
// the store has it, as up from the stack file does; else NAME, emulated,
// and says so. A bundle named by its path runs as it is.
func hostArchNamed(e *env, home store.Home, t target) target {
	if filepath.Dir(t.bundle) != home.Images() {
		return t
	}
	man, err := bundle.Read(t.bundle)
	host := runtime.GOARCH
	if err != nil || man.Arch == "" || man.Arch == host {
		return t
	}
	dir := filepath.Join(home.Images(), store.BundleName(man.Name, host, man.Arch))
	if m, err := bundle.Read(dir); err == nil && m.Arch == host {
		t.bundle = dir
		return t
	}
	emulated(e, t.name, man.Arch, host)
	return t
}

func emulated(e *env, name, own, host string) {
	fmt.Fprintf(e.stderr, "%s: the stack's image is for %s and this host is %s: it runs emulated (TCG, several times slower); "+
		"emu build --arch %s makes a native image\n", name, own, host, host)
}

// planPorts applies EMU_PORT_* and --port to the image's ports.
func planPorts(man bundle.Manifest, flags []string) ([]proto.Forward, error) {
	var svcs []ports.Service
	for _, s := range man.Services {
		if len(s.Ports) > 0 {
			svcs = append(svcs, ports.Service{Name: s.Name, Ports: s.Ports})
		}
	}
	overrides, err := ports.FromEnv(os.Environ())
	if err != nil {
		return nil, usageError{err}
	}
	for _, f := range flags {
		o, err := ports.ParseOverride(f)
		if err != nil {
			return nil, usageError{err}
		}
		overrides = append(overrides, o)
	}
	fwds, err := ports.Plan(svcs, overrides)
	if err != nil {
		return nil, usageError{err}
	}
	return fwds, nil
}

// writeTable prints service, state and URL, one service a line.
func writeTable(w io.Writer, fwds []proto.Forward, services []event.Item) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSTATE\tURL")
	byService := map[string][]string{}
	for _, p := range fwds {
		u := p.URL()
		if p.Name == "http" || p.Name == "https" {
			u = p.Name + "://" + u
		}
		byService[p.Service] = append(byService[p.Service], u)
	}
	seen := map[string]bool{}
	for _, s := range services {
		seen[s.Name] = true
		urls := strings.Join(byService[s.Name], " ")
		if urls == "" {
			urls = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, orDash(string(s.State)), urls)
	}
	var rest []string
	for name := range byService {
		if !seen[name] {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	for _, name := range rest {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", name, "unknown", strings.Join(byService[name], " "))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var errNotRunning = instance.ErrNotRunning

func isNotRunning(err error) bool { return errors.Is(err, errNotRunning) }
