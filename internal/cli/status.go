package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/instance"
	"github.com/emu-dev/emu/internal/machine"
	"github.com/emu-dev/emu/internal/progress"
	"github.com/emu-dev/emu/internal/proto"
	"github.com/emu-dev/emu/internal/spec"
	"github.com/emu-dev/emu/internal/store"
)

// instanceReport is one instance as `emu status` shows it: derived from the
// pid file, QMP and the agent, never from a stored flag.
type instanceReport struct {
	Name     string          `json:"name"`
	Running  bool            `json:"running"`
	PID      int             `json:"pid,omitempty"`
	Accel    string          `json:"accel,omitempty"`
	Uptime   string          `json:"uptime,omitempty"`
	QEMU     string          `json:"qemu_status,omitempty"`
	Services []serviceReport `json:"services,omitempty"`
	Ports    []proto.Forward `json:"ports,omitempty"`
	Problem  string          `json:"problem,omitempty"`
	// Suspended: not running, with a saved state the next up resumes.
	Suspended *suspendReport `json:"suspended,omitempty"`

	items []event.Item
}

type suspendReport struct {
	Saved time.Time `json:"saved"`
	Size  int64     `json:"size"`
}

type serviceReport struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Msg   string `json:"msg,omitempty"`
}

func report(ctx context.Context, home store.Home, name string) instanceReport {
	inst := home.Instance(name)
	r := instanceReport{Name: name}
	info, _ := instance.ReadInfo(inst)
	r.Ports = info.Ports
	pid, err := instance.RunningPID(inst)
	if err != nil {
		if !isNotRunning(err) {
			r.Problem = err.Error()
		}
		if meta, ok := instance.Suspended(inst); ok {
			r.Suspended = &suspendReport{Saved: meta.Saved, Size: meta.Size}
		}
		return r
	}
	r.Running, r.PID, r.Accel = true, pid, info.Accel
	if !info.Started.IsZero() {
		r.Uptime = progress.Dur(time.Since(info.Started).Truncate(time.Second))
	}
	if st, err := instance.QEMUStatus(ctx, inst.QMP()); err == nil {
		r.QEMU = st
		if st == "io-error" {
			r.Problem = instance.DiskFull(inst)
			return r // the agent cannot answer a paused guest
		}
	} else {
		r.Problem = "qmp: " + err.Error()
	}
	st, err := machine.AgentStatus(ctx, inst.Agent(), 5*time.Second)
	if err != nil {
		r.Problem = "agent: " + err.Error()
	}
	r.items = st.Services
	for _, s := range st.Services {
		r.Services = append(r.Services, serviceReport{Name: s.Name, State: string(s.State), Msg: s.Msg})
	}
	return r
}

func writeReports(e *env, reps []instanceReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reps)
	}
	for i, r := range reps {
		if i > 0 {
			fmt.Fprintln(e.stdout)
		}
		if !r.Running {
			if s := r.Suspended; s != nil {
				fmt.Fprintf(e.stdout, "%s: suspended %s ago (state %s); emu up resumes it\n", r.Name,
					progress.Dur(time.Since(s.Saved).Truncate(time.Second)), progress.Humanize(s.Size))
				continue
			}
			fmt.Fprintf(e.stdout, "%s: not running\n", r.Name)
			continue
		}
		fmt.Fprintf(e.stdout, "%s: running, pid %d, %s, up %s, qemu %s\n", r.Name, r.PID, r.Accel, r.Uptime, orDash(r.QEMU))
		if r.Problem != "" {
			fmt.Fprintf(e.stdout, "  (%s)\n", r.Problem)
		}
		writeTable(e.stdout, r.Ports, r.items)
	}
	return nil
}

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "status", "[-f FILE | NAME] [--json]")
	file := fs.String("f", spec.DefaultFile, "the stack `file`")
	jsonOut := fs.Bool("json", false, "print the status as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	home, err := store.FromEnv(e.getenv)
	if err != nil {
		return err
	}
	var names []string
	all := false
	if len(pos) == 0 && !flagSet(fs, "f") {
		if _, err := os.Stat(spec.DefaultFile); err != nil {
			// No stack here: every instance emu knows.
			all = true
			names = knownInstances(home)
			if len(names) == 0 && !*jsonOut {
				fmt.Fprintln(e.stdout, "no instances")
				return nil
			}
		}
	}
	if !all {
		t, err := resolve(ctx, home, *file, flagSet(fs, "f"), pos)
		if err != nil {
			return err
		}
		names = []string{t.name}
	}
	reps := make([]instanceReport, 0, len(names))
	for _, n := range names {
		reps = append(reps, report(ctx, home, n))
	}
	return writeReports(e, reps, *jsonOut)
}

// knownInstances lists the instances that were ever started (they have
// state), sorted.
func knownInstances(home store.Home) []string {
	var names []string
	ents, _ := os.ReadDir(home.Instances())
	for _, ent := range ents {
		if _, err := os.Stat(home.Instance(ent.Name()).State()); ent.IsDir() && err == nil {
			names = append(names, ent.Name())
		}
	}
	sort.Strings(names)
	return names
}
