// Package latency measures event latency: from the guest agent stamping a
// step.output event to the host's view (the build's Sink) receiving it,
// side by side with the reference's approach, a host polling the serial
// console log at a fixed interval, on the same events of the same build.
//
// It boots QEMU, so it runs only with EMU_BENCH=1; see README.md.
package latency_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emu-dev/emu/internal/accel"
	"github.com/emu-dev/emu/internal/build"
	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/qemu"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
	"github.com/emu-dev/emu/internal/vmtest"
)

const (
	stackName = "latency-bench"
	stepName  = "ticks"
)

// Methods, in table order.
const (
	methodEmu     = "emu: agent channel to the build's Sink"
	methodPoll2s  = "reference: poll serial.log every 2s"
	methodPoll100 = "reference: poll serial.log every 100ms"
)

var methods = []string{methodEmu, methodPoll2s, methodPoll100}

// Clock alignments. latency_i = hostRecv_i - guestTime_i - offset; the true
// offset is unknown (the guest's clock starts from a 1 s RTC), and each
// alignment picks one:
//
//   - hello: offset = hostRecv(hello) - guestTime(hello), the hello taken
//     as instantaneous (the alignment issue 6 asks for).
//   - lower: offset = the smallest hostRecv - guestTime over the ticks: the
//     fastest tick taken as instantaneous. No event is faster than
//     instantaneous, so the true offset is at most this, and every latency
//     under this alignment is a lower bound of the true one.
//   - upper: offset = hostRecv(hello) - guestTime(agent's stage.start bake).
//     The agent emits that event after it read the provision request, which
//     the host sends after its Sink received the hello, so the true offset
//     is at least this, and every latency under this alignment is an upper
//     bound of the true one.
//   - raw: no alignment (offset 0): hostRecv - guestTime as the clocks read.
const (
	alignHello = "hello"
	alignLower = "lower"
	alignUpper = "upper"
	alignRaw   = "raw"
)

var alignments = []string{alignHello, alignLower, alignUpper, alignRaw}

var alignDoc = map[string]string{
	alignHello: "aligned at the agent's hello (hello taken as instantaneous)",
	alignLower: "lower bound: aligned at the fastest tick (taken as instantaneous)",
	alignUpper: "upper bound: aligned causally (the agent's stage.start bake follows the host's request, sent after the hello arrived)",
	alignRaw:   "unaligned: host receive time - guest time as the two clocks read",
}

// Stats are one method's latencies in one run, in milliseconds.
type Stats struct {
	Events int     `json:"events"`
	Min    float64 `json:"min_ms"`
	Median float64 `json:"median_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
	// FirstDecileMedian and LastDecileMedian show clock drift over the
	// run: with no drift they agree.
	FirstDecileMedian float64   `json:"first_decile_median_ms"`
	LastDecileMedian  float64   `json:"last_decile_median_ms"`
	Latencies         []float64 `json:"latencies_ms,omitempty"`
}

// Run is one build's measurements.
type Run struct {
	Run          int     `json:"run"`
	BuildSeconds float64 `json:"build_seconds"`
	BakeSeconds  float64 `json:"bake_seconds"`
	Ticks        int     `json:"ticks_emitted"`
	// Offsets are host minus guest clock, in ms, by alignment.
	Offsets map[string]float64 `json:"offsets_ms"`
	// Methods holds each method's latencies by alignment.
	Methods map[string]map[string]Stats `json:"methods"`
	// Ratio is the reference's median over emu's median, by alignment
	// and polling interval.
	Ratio map[string]map[string]float64 `json:"ratio_vs_emu_median"`
}

// Spread is min, median and max of one figure across runs.
type Spread struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

// Summary is one method's figures across runs.
type Summary struct {
	EventsPerRun []int   `json:"events_per_run"`
	Median       Spread  `json:"median_ms"`
	P99          Spread  `json:"p99_ms"`
	Max          Spread  `json:"max_ms"`
	Ratio        *Spread `json:"ratio_vs_emu_median,omitempty"`
}

// Results is what the JSON file holds.
type Results struct {
	Date    string `json:"date"`
	Machine struct {
		CPUs       int    `json:"cpus"`
		Go         string `json:"go"`
		QEMU       string `json:"qemu"`
		Accel      string `json:"accel"`
		OtherQEMUs int    `json:"other_qemu_processes_at_start"`
	} `json:"machine"`
	TicksPerRun int                           `json:"ticks_per_run"`
	TickSleep   string                        `json:"tick_sleep"`
	Runs        []Run                         `json:"runs"`
	Summary     map[string]map[string]Summary `json:"summary"` // by alignment, method
	Methods     []string                      `json:"methods"`
	Alignments  map[string]string             `json:"alignments"`
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestEventLatency(t *testing.T) {
	if os.Getenv("EMU_BENCH") != "1" {
		t.Skip("benchmark: set EMU_BENCH=1 to run (boots QEMU)")
	}
	vmtest.Skip(t)
	runs := envInt("EMU_BENCH_RUNS", 3)
	ticks := envInt("EMU_BENCH_TICKS", 1200)
	const sleep = "0.005"
	out := os.Getenv("EMU_BENCH_OUT")
	if out == "" {
		out = "results.json" // the package directory: bench/latency/results.json
	}

	var res Results
	res.Date = time.Now().UTC().Format(time.RFC3339)
	res.Machine.CPUs = runtime.NumCPU()
	res.Machine.Go = runtime.Version()
	res.Machine.QEMU = qemuVersion()
	res.Machine.Accel = "tcg"
	res.Machine.OtherQEMUs = len(qemuProcs())
	res.TicksPerRun = ticks
	res.TickSleep = sleep
	res.Methods = methods
	res.Alignments = alignDoc
	if res.Machine.OtherQEMUs > 0 {
		t.Logf("note: %d other QEMU process(es) running on this %d-CPU machine", res.Machine.OtherQEMUs, res.Machine.CPUs)
	}

	base := vmtest.BaseTarball(t, t.TempDir())
	agentBin := vmtest.Agent(t)
	for i := 1; i <= runs; i++ {
		r := runOnce(t, base, agentBin, ticks, sleep)
		r.Run = i
		h := r.Methods[alignHello]
		t.Logf("run %d: build %.1fs, bake %.1fs, hello-aligned medians: emu %.2f ms, poll 2s %.0f ms, poll 100ms %.1f ms; emu median bracket [%.2f, %.2f] ms",
			i, r.BuildSeconds, r.BakeSeconds, h[methodEmu].Median, h[methodPoll2s].Median, h[methodPoll100].Median,
			r.Methods[alignLower][methodEmu].Median, r.Methods[alignUpper][methodEmu].Median)
		res.Runs = append(res.Runs, r)
	}
	res.Summary = summarize(res.Runs)
	table := markdown(res)
	fmt.Println(table)

	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(out)
	t.Logf("results written to %s", abs)
}

// recv is one tick as the host saw it over the agent channel.
type recv struct {
	guest time.Time
	host  time.Time
}

// collector is the build's Sink: it stamps every event's arrival.
type collector struct {
	home  store.Home
	start func(serial string)

	mu     sync.Mutex
	hello  *recv
	bake   *recv // the agent's stage.start bake
	ticks  map[int]recv
	bakeT0 time.Time
	bakeT1 time.Time
}

var tickRe = regexp.MustCompile(`^tick (\d+)$`)

func (c *collector) Emit(e event.Event) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case e.Kind == event.Hello && c.hello == nil:
		c.hello = &recv{guest: e.Time, host: now}
	case e.Kind == event.StepOutput && e.Name == stepName:
		if m := tickRe.FindStringSubmatch(e.Msg); m != nil {
			n, _ := strconv.Atoi(m[1])
			c.ticks[n] = recv{guest: e.Time, host: now}
		}
	case e.Kind == event.StageStart && e.Name == "bake" && c.bake == nil:
		c.bake = &recv{guest: e.Time, host: now}
	case e.Kind == event.StepStart && e.Name == stepName:
		c.bakeT0 = now
	case (e.Kind == event.StepDone || e.Kind == event.StepFailed) && e.Name == stepName:
		c.bakeT1 = now
	case e.Kind == event.StageStart && e.Name == "provision":
		// The log directory was made when the build began; the newest
		// one is this build's.
		dir := c.home.BuildLogs(stackName)
		ents, err := os.ReadDir(dir)
		var names []string
		for _, ent := range ents {
			if ent.IsDir() {
				names = append(names, ent.Name())
			}
		}
		if err != nil || len(names) == 0 {
			return
		}
		sort.Strings(names)
		c.start(filepath.Join(dir, names[len(names)-1], store.SerialLog))
	}
}

// poller is the reference's approach: read what the serial log gained
// every interval, and note when each tick line is first seen.
type poller struct {
	interval time.Duration
	want     int
	seen     map[int]time.Time
	done     chan struct{}
}

// consoleTickRe matches the agent's console echo of a tick's event:
// "emu-agent: step.output ticks: tick 12".
var consoleTickRe = regexp.MustCompile(`step\.output ` + stepName + `: tick (\d+)\s*$`)

func (p *poller) run(path string, stop <-chan struct{}) {
	defer close(p.done)
	tk := time.NewTicker(p.interval)
	defer tk.Stop()
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var partial []byte
	buf := make([]byte, 256*1024)
	for {
		stopped := false
		select {
		case <-tk.C:
		case <-stop:
			// One last poll at the next tick, as the reference would.
			<-tk.C
			stopped = true
		}
		if f == nil {
			var err error
			if f, err = os.Open(path); err != nil {
				f = nil
				if stopped {
					return
				}
				continue
			}
		}
		var data []byte
		for {
			n, err := f.Read(buf)
			data = append(data, buf[:n]...)
			if err != nil || n == 0 {
				break
			}
		}
		now := time.Now()
		data = append(partial, data...)
		last := strings.LastIndexByte(string(data), '\n')
		if last < 0 {
			partial = data
		} else {
			for _, line := range strings.Split(string(data[:last]), "\n") {
				if m := consoleTickRe.FindStringSubmatch(strings.TrimRight(line, "\r")); m != nil {
					n, _ := strconv.Atoi(m[1])
					if _, ok := p.seen[n]; !ok {
						p.seen[n] = now
					}
				}
			}
			partial = append([]byte(nil), data[last+1:]...)
		}
		if stopped || len(p.seen) >= p.want {
			return
		}
	}
}

func runOnce(t *testing.T, base, agentBin string, ticks int, sleep string) Run {
	t.Helper()
	dir := t.TempDir()
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "tick $i"; i=$((i+1)); sleep %s; done`, ticks, sleep)
	src := "name: " + stackName + "\nbase: {suite: trixie}\nvm: {cpus: 1, memory: 256MiB, disk: 1GiB}\nbake:\n" +
		"  - name: " + stepName + "\n    run: [/bin/sh, -c, " + strconv.Quote(script) + "]\n    timeout: 5m\n"
	path := filepath.Join(dir, "emu.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	stack, err := spec.Load(path)
	if err != nil {
		t.Fatalf("load stack: %v", err)
	}
	home := store.At(filepath.Join(dir, "home"))

	polls := []*poller{
		{interval: 2 * time.Second, want: ticks, seen: map[int]time.Time{}, done: make(chan struct{})},
		{interval: 100 * time.Millisecond, want: ticks, seen: map[int]time.Time{}, done: make(chan struct{})},
	}
	stop := make(chan struct{})
	var started sync.Once
	c := &collector{home: home, ticks: map[int]recv{}}
	c.start = func(serial string) {
		started.Do(func() {
			for _, p := range polls {
				go p.run(serial, stop)
			}
		})
	}
	t0 := time.Now()
	_, err = build.Build(context.Background(), build.Options{
		Stack:       stack,
		Home:        home,
		OutDir:      filepath.Join(dir, "out"),
		AgentBinary: agentBin,
		Accel:       accel.Choice{Accel: qemu.TCG, TimeoutScale: accel.TCGTimeoutScale},
		Sink:        c,
		BaseTarball: base,
		SkipVerify:  true,
	})
	took := time.Since(t0)
	close(stop)
	started.Do(func() {
		for _, p := range polls {
			close(p.done)
		}
	})
	for _, p := range polls {
		<-p.done
	}
	if err != nil {
		var be *build.Error
		if errors.As(err, &be) {
			t.Fatalf("build: %v\n%s", err, be.Detail())
		}
		t.Fatalf("build: %v", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hello == nil {
		t.Fatal("no hello event")
	}
	if len(c.ticks) < 1000 {
		t.Fatalf("only %d tick events reached the host, want at least 1000", len(c.ticks))
	}
	if c.bake == nil {
		t.Fatal("no stage.start bake event from the agent")
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	order := make([]int, 0, len(c.ticks))
	for n := range c.ticks {
		order = append(order, n)
	}
	sort.Ints(order)
	lowest := c.ticks[order[0]].host.Sub(c.ticks[order[0]].guest)
	for _, n := range order {
		if d := c.ticks[n].host.Sub(c.ticks[n].guest); d < lowest {
			lowest = d
		}
	}
	offsets := map[string]time.Duration{
		alignHello: c.hello.host.Sub(c.hello.guest),
		alignLower: lowest,
		alignUpper: c.hello.host.Sub(c.bake.guest),
		alignRaw:   0,
	}
	if offsets[alignUpper] > offsets[alignLower] {
		t.Errorf("clock bounds cross: upper-bound offset %s > lower-bound offset %s", offsets[alignUpper], offsets[alignLower])
	}
	run := Run{
		BuildSeconds: took.Seconds(),
		BakeSeconds:  c.bakeT1.Sub(c.bakeT0).Seconds(),
		Ticks:        len(c.ticks),
		Offsets:      map[string]float64{},
		Methods:      map[string]map[string]Stats{},
		Ratio:        map[string]map[string]float64{},
	}
	for i, name := range []string{methodPoll2s, methodPoll100} {
		if n := len(polls[i].seen); n < len(order) {
			t.Errorf("%s: saw %d of %d ticks in the serial log", name, n, len(order))
		}
	}
	for _, al := range alignments {
		off := offsets[al]
		run.Offsets[al] = ms(off)
		var emu []float64
		for _, n := range order {
			r := c.ticks[n]
			emu = append(emu, ms(r.host.Sub(r.guest)-off))
		}
		byMethod := map[string]Stats{methodEmu: stats(emu)}
		ratio := map[string]float64{}
		for i, name := range []string{methodPoll2s, methodPoll100} {
			var lat []float64
			for _, n := range order {
				if seen, ok := polls[i].seen[n]; ok {
					lat = append(lat, ms(seen.Sub(c.ticks[n].guest)-off))
				}
			}
			s := stats(lat)
			byMethod[name] = s
			ratio[name] = s.Median / byMethod[methodEmu].Median
		}
		run.Methods[al] = byMethod
		run.Ratio[al] = ratio
	}
	return run
}

func stats(xs []float64) Stats {
	s := Stats{Events: len(xs), Latencies: xs}
	if len(xs) == 0 {
		return s
	}
	sorted := append([]float64(nil), xs...)
	sort.Float64s(sorted)
	s.Min = sorted[0]
	s.Median = median(sorted)
	s.P99 = sorted[int(math.Ceil(0.99*float64(len(sorted))))-1]
	s.Max = sorted[len(sorted)-1]
	d := len(xs) / 10
	if d > 0 {
		s.FirstDecileMedian = median(sortedCopy(xs[:d]))
		s.LastDecileMedian = median(sortedCopy(xs[len(xs)-d:]))
	}
	return s
}

func sortedCopy(xs []float64) []float64 {
	c := append([]float64(nil), xs...)
	sort.Float64s(c)
	return c
}

// median of sorted xs.
func median(xs []float64) float64 {
	n := len(xs)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func spread(xs []float64) Spread {
	s := sortedCopy(xs)
	return Spread{Min: s[0], Median: median(s), Max: s[len(s)-1]}
}

func summarize(runs []Run) map[string]map[string]Summary {
	out := map[string]map[string]Summary{}
	for _, al := range alignments {
		out[al] = map[string]Summary{}
		for _, m := range methods {
			var sum Summary
			var med, p99, max, ratio []float64
			for _, r := range runs {
				s := r.Methods[al][m]
				sum.EventsPerRun = append(sum.EventsPerRun, s.Events)
				med = append(med, s.Median)
				p99 = append(p99, s.P99)
				max = append(max, s.Max)
				if v, ok := r.Ratio[al][m]; ok {
					ratio = append(ratio, v)
				}
			}
			sum.Median, sum.P99, sum.Max = spread(med), spread(p99), spread(max)
			if len(ratio) > 0 {
				sp := spread(ratio)
				sum.Ratio = &sp
			}
			out[al][m] = sum
		}
	}
	return out
}

// fmtMs renders milliseconds with precision that fits their size.
func fmtMs(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func cell(s Spread) string {
	return fmt.Sprintf("%s (%s–%s)", fmtMs(s.Median), fmtMs(s.Min), fmtMs(s.Max))
}

// markdown renders the summary, one table per alignment: each latency
// cell is the median across runs of that run's figure, with the min and max
// across runs in parentheses.
func markdown(res Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nEvent latency: %d runs (builds) of %d step.output events each; %d CPUs, %s, accel %s",
		len(res.Runs), res.TicksPerRun, res.Machine.CPUs, res.Machine.QEMU, res.Machine.Accel)
	if res.Machine.OtherQEMUs > 0 {
		fmt.Fprintf(&b, ", %d other QEMU process(es) running", res.Machine.OtherQEMUs)
	}
	b.WriteString(".\nLatencies in ms; each cell: median across runs (min–max across runs).\n")
	for _, al := range []string{alignHello, alignUpper, alignLower} {
		fmt.Fprintf(&b, "\nClock alignment: %s.\n\n", alignDoc[al])
		b.WriteString("| method | events/run | median | p99 | max | reference median / emu median |\n")
		b.WriteString("|---|---|---|---|---|---|\n")
		for _, m := range res.Methods {
			s := res.Summary[al][m]
			var ev []string
			for _, n := range s.EventsPerRun {
				ev = append(ev, strconv.Itoa(n))
			}
			ratio := "—"
			if s.Ratio != nil {
				if res.Summary[al][methodEmu].Median.Min <= 0 {
					ratio = "n/a (emu's median ≤ 0 here)"
				} else {
					ratio = fmt.Sprintf("%s× (%s–%s)", fmtX(s.Ratio.Median), fmtX(s.Ratio.Min), fmtX(s.Ratio.Max))
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", m, strings.Join(ev, ", "), cell(s.Median), cell(s.P99), cell(s.Max), ratio)
		}
	}
	b.WriteString("\nPer run (ms unless noted):\n\n")
	b.WriteString("| run | build s | bake s | hello offset (host − guest clock) | hello − lower offset | upper − lower offset | emu median: hello / lower / upper | emu drift, first→last decile (lower) | poll 2s median (upper) | poll 100ms median (upper) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range res.Runs {
		lo := r.Methods[alignLower][methodEmu]
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %s | %s | %s | %s / %s / %s | %s→%s | %s | %s |\n", r.Run, r.BuildSeconds, r.BakeSeconds,
			fmtMs(r.Offsets[alignHello]), fmtMs(r.Offsets[alignHello]-r.Offsets[alignLower]), fmtMs(r.Offsets[alignUpper]-r.Offsets[alignLower]),
			fmtMs(r.Methods[alignHello][methodEmu].Median), fmtMs(lo.Median), fmtMs(r.Methods[alignUpper][methodEmu].Median),
			fmtMs(lo.FirstDecileMedian), fmtMs(lo.LastDecileMedian),
			fmtMs(r.Methods[alignUpper][methodPoll2s].Median), fmtMs(r.Methods[alignUpper][methodPoll100].Median))
	}
	return b.String()
}

func fmtX(v float64) string {
	if math.Abs(v) >= 10 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func qemuVersion() string {
	out, err := exec.Command("qemu-system-x86_64", "--version").Output()
	if err != nil {
		return "qemu unknown"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	if f := strings.Fields(line); len(f) >= 4 {
		return "QEMU " + f[3]
	}
	return strings.TrimSpace(line)
}

// qemuProcs lists running qemu-system processes (other benchmarks, VMs).
func qemuProcs() []int {
	var pids []int
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range ms {
		f, err := os.Open(m)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 256))
		f.Close()
		arg0, _, _ := strings.Cut(string(b), "\x00")
		if strings.Contains(filepath.Base(arg0), "qemu-system") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(m)))
			pids = append(pids, pid)
		}
	}
	return pids
}
