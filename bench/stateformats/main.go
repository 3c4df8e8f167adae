// Command stateformats measures the ways QEMU can save and restore a
// paused guest, on the demo image, so that emu's suspend/resume uses the
// fastest one the QEMU at hand has:
//
//   - fd: emu's own (machine.SaveState, machine.RestoreState): `migrate
//     fd:` into a pipe, zstd at its fastest level into a file, and back;
//   - savevm: an internal qcow2 snapshot in the overlay (HMP savevm
//     through human-monitor-command), loaded by HMP loadvm into a QEMU
//     started paused (-S) or by -loadvm at QEMU's start;
//   - mapped-ram: `migrate file:` with the mapped-ram capability (QEMU 9
//     and later), alone or with multifd and a number of channels.
//
// Each QEMU boots the guest once, to ready. Each round then saves it once
// per method (pause, save, copy the overlay as it is then, run it on), and
// afterwards each saved state is restored into a new QEMU with the same
// argv, from a fresh copy of its overlay: QEMU's start to the load
// complete, to the guest running, to its agent's answer to OpResume and to
// every service healthy again. Before each measurement it waits until no
// other qemu-system process runs, and it takes one again when another
// started meanwhile. It prints a markdown table, min/median/max.
//
// Usage (as root, after `make all demo-api` and a demo build into the
// EMU_HOME below):
//
//	go run ./bench/stateformats -home /var/tmp/emu-stateformats -runs 5 \
//	    -qemu '7.2=qemu-system-x86_64' \
//	    -qemu '10.0=/opt/qemu10/root/usr/bin/qemu-system-x86_64 -L /opt/qemu10/root/usr/share/qemu'
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/bundle"
	"github.com/emu-dev/emu/internal/command"
	"github.com/emu-dev/emu/internal/disk"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/qmp"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

type qemuFlags []string

func (q *qemuFlags) String() string     { return strings.Join(*q, ", ") }
func (q *qemuFlags) Set(v string) error { *q = append(*q, v); return nil }

type options struct {
	home, image string
	runs        int
	cold        bool
	quietWait   time.Duration
	only        string
	memory      spec.Size
	log         *slog.Logger
}

func main() {
	var o options
	var qemus qemuFlags
	flag.StringVar(&o.home, "home", "/var/tmp/emu-stateformats", "EMU_HOME the demo was built into")
	flag.StringVar(&o.image, "image", "demo", "image name")
	flag.IntVar(&o.runs, "runs", 3, "rounds per method")
	flag.BoolVar(&o.cold, "cold", true, "drop the state and overlay from the page cache before each restore")
	flag.DurationVar(&o.quietWait, "quiet-wait", 15*time.Minute, "longest wait for other QEMUs to end before a round")
	flag.StringVar(&o.only, "only", "", "comma-separated methods to run (default all the QEMU has)")
	flag.Var(&qemus, "qemu", "LABEL=BINARY [ARGS...]; repeatable")
	memory := flag.String("memory", "", "guest memory instead of the image's (e.g. 2GiB)")
	debug := flag.Bool("debug", false, "log QEMU argv and QMP traffic")
	flag.Parse()
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	o.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *memory != "" {
		var err error
		if o.memory, err = spec.ParseSize(*memory); err != nil {
			fmt.Fprintf(os.Stderr, "stateformats: -memory: %v\n", err)
			os.Exit(2)
		}
	}
	if len(qemus) == 0 {
		qemus = qemuFlags{"system=qemu-system-x86_64"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var all []row
	for _, q := range qemus {
		rows, err := bench(ctx, o, q)
		all = append(all, rows...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "stateformats: %s: %v\n", q, err)
			printTable(os.Stdout, all)
			os.Exit(1)
		}
	}
	printTable(os.Stdout, all)
}

// saved is one saved state: the file (or the snapshot's name) and a copy
// of the overlay as it was when the state was saved.
type saved struct {
	method  string
	file    string
	snap    string
	overlay string
}

// sample is one measurement; zero fields were not measured.
type sample struct {
	save, qmp, load, running, hello, ready time.Duration
	size, alloc                            int64
}

type row struct {
	qemu, save, restore string
	samples             []sample
	errs                []string
	// noisy counts samples kept though another QEMU ran during them.
	noisy int
}

// bench measures every method spec's QEMU has.
func bench(ctx context.Context, o options, spec string) ([]row, error) {
	label, cmdline, ok := strings.Cut(spec, "=")
	if !ok {
		return nil, fmt.Errorf("-qemu %q: want LABEL=BINARY [ARGS...]", spec)
	}
	work, err := os.MkdirTemp("/var/tmp", "sf-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	b, err := newBench(ctx, o, label, strings.Fields(cmdline), work)
	if err != nil {
		return nil, err
	}
	label = b.label
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go b.watch(wctx)
	saves := b.saveMethods()
	if o.only != "" {
		want := strings.Split(o.only, ",")
		saves = slices.DeleteFunc(saves, func(s saveMethod) bool { return !slices.Contains(want, s.name) })
	}
	rows := map[string]*row{}
	var order []string
	get := func(save, restore string) *row {
		k := save + "\x00" + restore
		if rows[k] == nil {
			rows[k] = &row{qemu: label, save: save, restore: restore}
			order = append(order, k)
		}
		return rows[k]
	}
	states, err := b.saveAll(ctx, saves, get)
	if err != nil {
		return collect(rows, order), err
	}
	for _, st := range states {
		for _, r := range b.restoreMethods(st.method) {
			rw := get(st.method, r.name)
			var s sample
			var err error
			for try := range tries {
				b.waitQuiet(ctx)
				t0 := time.Now()
				s, err = b.restore(ctx, st, r)
				if err != nil || !b.disturbed(t0) {
					break
				}
				o.log.Info("another QEMU ran during the restore", "retry", try+1 < tries)
				if try+1 == tries {
					rw.noisy++
				}
			}
			if err != nil {
				o.log.Warn("restore", "qemu", label, "save", st.method, "restore", r.name, "err", err)
				rw.errs = append(rw.errs, err.Error())
				continue
			}
			o.log.Info("restored", "qemu", label, "save", st.method, "restore", r.name,
				"load", s.load, "running", s.running, "hello", s.hello, "ready", s.ready)
			rw.samples = append(rw.samples, s)
		}
		os.Remove(st.file)
		os.Remove(st.overlay)
	}
	return collect(rows, order), ctx.Err()
}

func collect(rows map[string]*row, order []string) []row {
	var out []row
	for _, k := range order {
		out = append(out, *rows[k])
	}
	return out
}

// benchQEMU is one QEMU binary and the guest config it boots.
type benchQEMU struct {
	o      options
	label  string
	argv   []string // binary and the arguments it always gets
	work   string
	cfg    machine.Config
	base   string
	mapped bool // has the mapped-ram capability
	// lastOther is when another QEMU was last seen (unix ns).
	lastOther atomic.Int64
	wrapped   int
}

func newBench(ctx context.Context, o options, label string, argv []string, work string) (*benchQEMU, error) {
	home := store.At(o.home)
	dir := filepath.Join(home.Images(), o.image)
	man, err := bundle.Read(dir)
	if err != nil {
		return nil, err
	}
	base, err := machine.BaseDisk(ctx, home.DiskCache(), dir, man)
	if err != nil {
		return nil, err
	}
	b := &benchQEMU{o: o, label: label, argv: argv, work: work, base: base}
	b.cfg = machine.Config{
		Name: "emu-stateformats", Arch: man.Arch, VM: man.VM,
		Accel:   accel.Choice{Accel: qemu.TCG, TimeoutScale: 1},
		Kernel:  filepath.Join(dir, store.BundleKernel),
		Initrd:  filepath.Join(dir, store.BundleInitrd),
		Cmdline: man.Cmdline,
		Drive:   qemu.Drive{Path: filepath.Join(work, "overlay.qcow2"), Format: "qcow2", Discard: true},
		Serial:  filepath.Join(work, "console.log"),
		Output:  filepath.Join(work, "qemu.log"),
		// The agent's socket stays abstract: nothing to clean up.
		QMPSocket: filepath.Join(work, "qmp.sock"),
		Log:       o.log,
	}
	if o.memory > 0 {
		b.cfg.VM.Memory = o.memory
	}
	if b.cfg.QEMU, err = b.wrapper(); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, argv[0], append(argv[1:], "--version")...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", argv[0], err)
	}
	version, _, _ := strings.Cut(strings.TrimPrefix(string(out), "QEMU emulator version "), " ")
	b.label = fmt.Sprintf("%s, %d vCPU, %s", version, b.cfg.VM.CPUs, b.cfg.VM.Memory)
	return b, nil
}

// wrapper writes a script that runs the QEMU with its own arguments, the
// ones machine.Args made, then extra: Config.QEMU is a binary, not a
// command line.
func (b *benchQEMU) wrapper(extra ...string) (string, error) {
	b.wrapped++
	path := filepath.Join(b.work, fmt.Sprintf("qemu-%d", b.wrapped))
	q := func(s []string) string {
		var out []string
		for _, a := range s {
			out = append(out, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
		}
		return strings.Join(out, " ")
	}
	script := fmt.Sprintf("#!/bin/sh\nexec %s \"$@\" %s\n", q(b.argv), q(extra))
	return path, os.WriteFile(path, []byte(script), 0o755)
}

// waitQuiet waits until no qemu-system process runs but ours, at most
// quietWait; it says so when it gave up.
func (b *benchQEMU) waitQuiet(ctx context.Context) {
	start := time.Now()
	for {
		others := b.otherQEMUs()
		if len(others) == 0 {
			if d := time.Since(start); d > time.Second {
				b.o.log.Info("quiet now", "waited", d.Round(time.Second))
			}
			return
		}
		if time.Since(start) > b.o.quietWait {
			b.o.log.Warn("NOT QUIET: measuring beside other QEMUs", "pids", others)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// watch notes, twice a second, when another QEMU runs: a measurement
// during which one did is taken again (disturbed).
func (b *benchQEMU) watch(ctx context.Context) {
	for {
		if len(b.otherQEMUs()) > 0 {
			b.lastOther.Store(time.Now().UnixNano())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// disturbed reports whether another QEMU ran since t0 (or just before).
func (b *benchQEMU) disturbed(t0 time.Time) bool {
	return b.lastOther.Load() >= t0.Add(-time.Second).UnixNano()
}

// tries is how often a disturbed measurement is taken again before it is
// kept and counted as noisy.
const tries = 4

func (b *benchQEMU) otherQEMUs() []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, d := range dirs {
		var pid int
		fmt.Sscanf(filepath.Base(filepath.Dir(d)), "%d", &pid)
		c, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// Ours are the ones whose argv names our work directory.
		exe, _, _ := strings.Cut(string(c), "\x00")
		if strings.Contains(filepath.Base(exe), "qemu-system") && !strings.Contains(string(c), b.work+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// start starts QEMU on overlay with cfg's argv, plus extra.
func (b *benchQEMU) start(ctx context.Context, overlay string, incoming bool, extra ...string) (*machine.VM, *qmp.Client, error) {
	cfg := b.cfg
	cfg.Drive.Path, cfg.Incoming = overlay, incoming
	if len(extra) > 0 {
		var err error
		if cfg.QEMU, err = b.wrapper(extra...); err != nil {
			return nil, nil, err
		}
	}
	os.Remove(cfg.QMPSocket)
	vm, err := machine.Start(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	c, err := qmp.Dial(ctx, cfg.QMPSocket, qmp.WithLogger(b.o.log))
	if err != nil {
		b.stop(ctx, vm, nil)
		return nil, nil, err
	}
	return vm, c, nil
}

func (b *benchQEMU) stop(ctx context.Context, vm *machine.VM, c *qmp.Client) {
	if c != nil {
		c.Close()
	}
	vm.Stop(context.WithoutCancel(ctx), 5*time.Second)
}

// waitReady follows the guest's events until a ready event (with the
// request id when id is set), and returns when hello and ready came.
func waitReady(ctx context.Context, vm *machine.VM, id string) (hello, ready time.Time, err error) {
	for {
		select {
		case <-ctx.Done():
			return hello, ready, fmt.Errorf("wait for ready: %w (qemu log and console in the work dir)", ctx.Err())
		case e, ok := <-vm.Events():
			if !ok {
				return hello, ready, fmt.Errorf("agent channel closed: %v", vm.StreamErr())
			}
			if id != "" && e.Fields[proto.FieldReq] != id {
				continue
			}
			switch e.Kind {
			case event.Hello:
				hello = time.Now()
			case event.Ready:
				return hello, time.Now(), nil
			case event.Failed:
				return hello, ready, fmt.Errorf("guest failed: %s", e.Msg)
			}
		}
	}
}

// saveAll boots the guest once and saves it runs times with each method,
// round-robin.
func (b *benchQEMU) saveAll(ctx context.Context, saves []saveMethod, get func(save, restore string) *row) ([]saved, error) {
	if err := disk.CreateOverlay(ctx, command.Exec{}, b.base, b.cfg.Drive.Path); err != nil {
		return nil, err
	}
	b.waitQuiet(ctx)
	bootCtx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	t0 := time.Now()
	vm, c, err := b.start(bootCtx, b.cfg.Drive.Path, false)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer b.stop(ctx, vm, c)
	if _, _, err := waitReady(bootCtx, vm, ""); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	b.o.log.Info("booted to ready", "qemu", b.label, "took", time.Since(t0).Round(time.Second))
	b.mapped = b.hasCapability(ctx, c, "mapped-ram")
	var states []saved
	for round := range b.o.runs {
		b.waitQuiet(ctx)
		for _, m := range saves {
			if m.mapped && !b.mapped {
				continue
			}
			rw := get(m.name, "")
			var st saved
			var s sample
			var err error
			for try := range tries {
				b.waitQuiet(ctx)
				// Let the guest run a little between saves, as it would.
				time.Sleep(3 * time.Second)
				sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
				t0 := time.Now()
				st, s, err = b.save(sctx, c, m, round)
				cancel()
				if err != nil || !b.disturbed(t0) {
					break
				}
				b.o.log.Info("another QEMU ran during the save", "retry", try+1 < tries)
				if try+1 == tries {
					rw.noisy++
					break
				}
				os.Remove(st.file)
				os.Remove(st.overlay)
			}
			if err != nil {
				b.o.log.Warn("save", "qemu", b.label, "method", m.name, "err", err)
				rw.errs = append(rw.errs, err.Error())
				if cerr := c.Cont(ctx); cerr != nil {
					return states, fmt.Errorf("run the guest on after a failed save: %w", cerr)
				}
				continue
			}
			b.o.log.Info("saved", "qemu", b.label, "method", m.name, "took", s.save, "size", s.size, "alloc", s.alloc)
			rw.samples = append(rw.samples, s)
			states = append(states, st)
		}
	}
	return states, nil
}

func (b *benchQEMU) hasCapability(ctx context.Context, c *qmp.Client, name string) bool {
	var caps []struct {
		Capability string `json:"capability"`
	}
	if err := c.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return false
	}
	return slices.ContainsFunc(caps, func(x struct {
		Capability string `json:"capability"`
	}) bool {
		return x.Capability == name
	})
}

// save pauses the guest, saves it with m, copies the overlay and runs the
// guest on.
func (b *benchQEMU) save(ctx context.Context, c *qmp.Client, m saveMethod, round int) (saved, sample, error) {
	st := saved{method: m.name, overlay: filepath.Join(b.work, fmt.Sprintf("%s-%d.qcow2", m.name, round))}
	before, err := sizes(b.cfg.Drive.Path)
	if err != nil {
		return st, sample{}, err
	}
	t0 := time.Now()
	if err := c.Stop(ctx); err != nil {
		return st, sample{}, err
	}
	s, err := m.save(ctx, b, c, &st, round)
	if err != nil {
		return st, s, err
	}
	s.save = time.Since(t0)
	if st.file == "" {
		// An internal snapshot: what it costs is the overlay's growth.
		after, err := sizes(b.cfg.Drive.Path)
		if err != nil {
			return st, s, err
		}
		s.size, s.alloc = after[0]-before[0], after[1]-before[1]
	} else {
		sz, err := sizes(st.file)
		if err != nil {
			return st, s, err
		}
		s.size, s.alloc = sz[0], sz[1]
	}
	if err := copySparse(ctx, b.cfg.Drive.Path, st.overlay); err != nil {
		return st, s, err
	}
	if st.snap != "" {
		// Each snapshot alone in its copy; the live overlay drops it so
		// the next save starts where this one did.
		if err := hmp(ctx, c, "delvm "+st.snap); err != nil {
			return st, s, err
		}
	}
	return st, s, c.Cont(ctx)
}

// restore starts a QEMU on a fresh copy of st's overlay, loads st with r,
// runs the guest and asks its agent to resume.
func (b *benchQEMU) restore(ctx context.Context, st saved, r restoreMethod) (sample, error) {
	var s sample
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	overlay := filepath.Join(b.work, "restore.qcow2")
	defer os.Remove(overlay)
	if err := copySparse(ctx, st.overlay, overlay); err != nil {
		return s, err
	}
	if b.o.cold {
		for _, p := range []string{overlay, st.file} {
			if err := evict(p); err != nil {
				return s, err
			}
		}
	}
	t0 := time.Now()
	vm, c, err := b.start(ctx, overlay, r.incoming, r.extra(st)...)
	if err != nil {
		return s, fmt.Errorf("start qemu: %w", err)
	}
	defer b.stop(ctx, vm, c)
	s.qmp = time.Since(t0)
	running, err := r.load(ctx, b, c, st)
	if err != nil {
		return s, fmt.Errorf("load: %w%s", err, qemuSays(b.cfg.Output))
	}
	s.load = time.Since(t0)
	if !running {
		if err := c.Cont(ctx); err != nil {
			return s, err
		}
	}
	s.running = time.Since(t0)
	id := fmt.Sprintf("stateformats-%d", time.Now().UnixNano())
	entropy := make([]byte, 64)
	rand.Read(entropy)
	if err := vm.Send(proto.Request{Op: proto.OpResume, ID: id, Time: time.Now(), Entropy: entropy}); err != nil {
		return s, fmt.Errorf("send resume: %w", err)
	}
	hello, ready, err := waitReady(ctx, vm, id)
	if err != nil {
		return s, err
	}
	s.hello, s.ready = hello.Sub(t0), ready.Sub(t0)
	return s, nil
}

func qemuSays(log string) string {
	b, _ := os.ReadFile(log)
	if s := strings.TrimSpace(string(b)); s != "" {
		return "; qemu: " + strings.Join(command.LastLines(s, 3), "; ")
	}
	return ""
}

// sizes is path's apparent and allocated size.
func sizes(path string) ([2]int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return [2]int64{}, err
	}
	alloc, err := disk.Allocated(path)
	return [2]int64{st.Size(), alloc}, err
}

func copySparse(ctx context.Context, src, dst string) error {
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %v: %s", src, err, out)
	}
	return nil
}

// evict writes path out and drops it from the page cache, so a restore
// reads it from the disk, as it would long after the save.
func evict(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// syncFile makes a state QEMU wrote itself durable, as SaveState does
// with its own.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func hmp(ctx context.Context, c *qmp.Client, line string) error {
	var out string
	if err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	// HMP reports its errors as output.
	if out = strings.TrimSpace(out); out != "" {
		return fmt.Errorf("%s: %s", line, out)
	}
	return nil
}

// A saveMethod saves the paused guest behind c; its state goes to st.
type saveMethod struct {
	name string
	// mapped methods need QEMU's mapped-ram capability.
	mapped bool
	save   func(ctx context.Context, b *benchQEMU, c *qmp.Client, st *saved, round int) (sample, error)
}

// A restoreMethod loads st into a QEMU started with incoming and extra;
// it says whether the guest runs already.
type restoreMethod struct {
	name     string
	incoming bool
	extra    func(st saved) []string
	load     func(ctx context.Context, b *benchQEMU, c *qmp.Client, st saved) (bool, error)
}

func noExtra(saved) []string { return nil }

const fdMethod, savevmMethod = "fd+zstd", "savevm"

func (b *benchQEMU) saveMethods() []saveMethod {
	ms := []saveMethod{
		{name: fdMethod, save: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st *saved, round int) (sample, error) {
			if b.mapped {
				// Capabilities stay set between migrations.
				if err := c.SetMigrationCapabilities(ctx, map[string]bool{"mapped-ram": false, "multifd": false}); err != nil {
					return sample{}, err
				}
				if err := c.SetMigrationParameters(ctx, map[string]any{"direct-io": false}); err != nil {
					return sample{}, err
				}
			}
			st.file = filepath.Join(b.work, fmt.Sprintf("fd-%d.zst", round))
			_, err := machine.SaveState(ctx, c, st.file)
			return sample{}, err
		}},
		{name: savevmMethod, save: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st *saved, round int) (sample, error) {
			st.snap = fmt.Sprintf("sf%d", round)
			if err := hmp(ctx, c, "savevm "+st.snap); err != nil {
				return sample{}, err
			}
			// Under cache=unsafe QEMU does not sync; SaveState does.
			return sample{}, syncFile(b.cfg.Drive.Path)
		}},
	}
	for _, v := range mappedVariants {
		ms = append(ms, saveMethod{name: v.name(), mapped: true, save: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st *saved, round int) (sample, error) {
			st.file = filepath.Join(b.work, fmt.Sprintf("%s-%d.ram", v.name(), round))
			if err := v.prepare(ctx, c, true); err != nil {
				return sample{}, err
			}
			if err := c.Migrate(ctx, "file:"+st.file); err != nil {
				return sample{}, err
			}
			if _, err := c.WaitMigration(ctx); err != nil {
				return sample{}, err
			}
			return sample{}, syncFile(st.file)
		}})
	}
	return ms
}

func (b *benchQEMU) restoreMethods(save string) []restoreMethod {
	switch save {
	case fdMethod:
		return []restoreMethod{{name: fdMethod, incoming: true, extra: noExtra,
			load: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st saved) (bool, error) {
				return false, machine.RestoreState(ctx, c, st.file)
			}}}
	case savevmMethod:
		return []restoreMethod{
			{name: "loadvm (HMP, QEMU started -S)", extra: func(saved) []string { return []string{"-S"} },
				load: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st saved) (bool, error) {
					return false, hmp(ctx, c, "loadvm "+st.snap)
				}},
			{name: "-loadvm at QEMU start", extra: func(st saved) []string { return []string{"-loadvm", st.snap} },
				load: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st saved) (bool, error) {
					// QMP answers once the main loop runs: after the load.
					s, err := c.Status(ctx)
					if err == nil && !s.Running {
						err = fmt.Errorf("guest not running after -loadvm: %s", s.Status)
					}
					return true, err
				}},
		}
	}
	for _, v := range mappedVariants {
		if v.name() == save {
			return []restoreMethod{{name: save, incoming: true, extra: noExtra,
				load: func(ctx context.Context, b *benchQEMU, c *qmp.Client, st saved) (bool, error) {
					if err := v.prepare(ctx, c, false); err != nil {
						return false, err
					}
					if err := c.MigrateIncoming(ctx, "file:"+st.file); err != nil {
						return false, err
					}
					_, err := c.WaitMigration(ctx)
					return false, err
				}}}
		}
	}
	return nil
}

// mapped is a file: migration with mapped-ram: each RAM page at a fixed
// offset of the file (zero pages are holes), with multifd channels
// writing and reading in parallel.
type mapped struct {
	channels int // 0: no multifd
	directIO bool
}

var mappedVariants = []mapped{{0, false}, {1, false}, {2, false}, {4, false}, {4, true}}

func (m mapped) name() string {
	n := "mapped-ram"
	if m.channels > 0 {
		n += fmt.Sprintf("+multifd%d", m.channels)
	}
	if m.directIO {
		n += "+direct-io"
	}
	return n
}

// prepare sets every capability and parameter the variants touch: they
// outlive a migration on the saving side.
func (m mapped) prepare(ctx context.Context, c *qmp.Client, outgoing bool) error {
	caps := map[string]bool{"events": true, "mapped-ram": true, "multifd": m.channels > 0}
	if err := c.SetMigrationCapabilities(ctx, caps); err != nil {
		return err
	}
	params := map[string]any{"direct-io": m.directIO}
	if m.channels > 0 {
		params["multifd-channels"] = m.channels
	}
	if outgoing {
		params["max-bandwidth"] = int64(1) << 40
	}
	return c.SetMigrationParameters(ctx, params)
}

func printTable(w io.Writer, rows []row) {
	fmt.Fprintln(w, "\n### Save (pause to the state synced to disk)")
	fmt.Fprintln(w, "\n| QEMU | method | n | save s | state size MiB (apparent) | allocated MiB | notes |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range rows {
		if r.restore != "" {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s |\n", r.qemu, r.save, len(r.samples),
			stat(r.samples, func(s sample) float64 { return s.save.Seconds() }, 2),
			stat(r.samples, func(s sample) float64 { return mib(s.size) }, 0),
			stat(r.samples, func(s sample) float64 { return mib(s.alloc) }, 0), notes(r))
	}
	fmt.Fprintln(w, "\n### Restore (from QEMU's start, seconds)")
	fmt.Fprintln(w, "\n| QEMU | saved by | loaded by | n | QMP up | load complete | guest running | agent hello | services ready | notes |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		if r.restore == "" {
			continue
		}
		sec := func(f func(sample) time.Duration) string {
			return stat(r.samples, func(s sample) float64 { return f(s).Seconds() }, 2)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", r.qemu, r.save, r.restore, len(r.samples),
			sec(func(s sample) time.Duration { return s.qmp }),
			sec(func(s sample) time.Duration { return s.load }),
			sec(func(s sample) time.Duration { return s.running }),
			sec(func(s sample) time.Duration { return s.hello }),
			sec(func(s sample) time.Duration { return s.ready }), notes(r))
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// stat is "min / median / max" of f over samples.
func stat(samples []sample, f func(sample) float64, prec int) string {
	if len(samples) == 0 {
		return "—"
	}
	var v []float64
	for _, s := range samples {
		v = append(v, f(s))
	}
	slices.Sort(v)
	return fmt.Sprintf("%.*f / %.*f / %.*f", prec, v[0], prec, v[len(v)/2], prec, v[len(v)-1])
}

// notes is a row's errors, and its samples another QEMU disturbed.
func notes(r row) string {
	var n []string
	if r.noisy > 0 {
		n = append(n, fmt.Sprintf("%d beside another QEMU", r.noisy))
	}
	if len(r.errs) > 0 {
		n = append(n, fmt.Sprintf("%d× %s", len(r.errs), strings.ReplaceAll(r.errs[0], "|", "/")))
	}
	return strings.Join(n, "; ")
}
