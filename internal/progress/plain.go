package progress

import (
	"fmt"
	"time"

	"github.com/emu-dev/emu/internal/event"
	"github.com/emu-dev/emu/internal/proto"
)

// plainLines renders e, already folded into r.status, as the lines Plain
// prints for it: one, except when a step fails while its output was hidden,
// where the output kept in the status follows.
func (r *Renderer) plainLines(e event.Event) []string {
	stamp := e.Time.UTC().Format(time.TimeOnly) + " "
	line := r.describe(e)
	if line == "" {
		return nil
	}
	lines := []string{stamp + line}
	if e.Kind == event.StepFailed && !r.verbose {
		if it, ok := find(r.status.Steps, e.Name); ok {
			for _, out := range it.Tail {
				lines = append(lines, stamp+"step "+e.Name+" | "+clean(out))
			}
		}
	}
	return lines
}

// describe is the human line for e without the time, "" for none. Durations
// come from the status, so it must already hold e.
func (r *Renderer) describe(e event.Event) string {
	s := r.status
	switch e.Kind {
	case event.Hello:
		line := withMsg("agent: connected", e.Msg)
		if v := e.Fields[proto.FieldVersion]; v != "" {
			line += " (version " + v + ")"
		}
		return line
	case event.StageStart:
		if _, ok := e.Fields[event.FieldTotal]; ok {
			return "" // a transfer: its one line comes when it ends
		}
		return withMsg("stage "+e.Name+": started", e.Msg)
	case event.StageProgress:
		return ""
	case event.StageDone:
		it, _ := find(s.Stages, e.Name)
		if tf, ok := transferFacts(it, e.Time); ok {
			return e.Name + ": " + Dur(it.Elapsed(e.Time)) + paren(tf)
		}
		if e.Fields[proto.FieldCached] == "true" && e.Msg != "" {
			return withMsg(e.Name+paren(facts(e.Fields)), e.Msg)
		}
		return "stage " + e.Name + ": done in " + Dur(it.Elapsed(e.Time)) + paren(facts(e.Fields))
	case event.StageFailed:
		it, _ := find(s.Stages, e.Name)
		return withMsg("stage "+e.Name+": failed after "+Dur(it.Elapsed(e.Time)), e.Msg)
	case event.StepStart:
		return "step " + e.Name + ": started"
	case event.StepOutput:
		if !r.verbose {
			return ""
		}
		return "step " + e.Name + " | " + clean(e.Msg)
	case event.StepDone:
		it, _ := find(s.Steps, e.Name)
		return "step " + e.Name + ": done in " + Dur(it.Elapsed(e.Time))
	case event.StepFailed:
		it, _ := find(s.Steps, e.Name)
		return withMsg("step "+e.Name+": failed"+exitCode(e)+" after "+Dur(it.Elapsed(e.Time)), e.Msg)
	case event.ServiceStarting:
		return withMsg("service "+e.Name+": starting", e.Msg)
	case event.ServiceHealthy:
		return withMsg("service "+e.Name+": healthy", e.Msg)
	case event.ServiceUnhealthy:
		return withMsg("service "+e.Name+": unhealthy", e.Msg)
	case event.Ready:
		return withMsg("ready", e.Msg)
	case event.Log:
		if e.Name != "" {
			return e.Name + ": " + clean(e.Msg)
		}
		return clean(e.Msg)
	case event.Done:
		return withMsg("done in "+Dur(s.Last.Sub(s.Start)), e.Msg)
	case event.Failed:
		head := "failed after " + Dur(s.Last.Sub(s.Start))
		if e.Name != "" {
			head += " in " + e.Name
		}
		return withMsg(head, e.Msg)
	}
	return withMsg(string(e.Kind)+" "+e.Name, e.Msg)
}

func find(items []event.Item, name string) (event.Item, bool) {
	for _, it := range items {
		if it.Name == name {
			return it, true
		}
	}
	return event.Item{}, false
}

func withMsg(s, msg string) string {
	if msg == "" {
		return s
	}
	return s + ": " + clean(msg)
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func exitCode(e event.Event) string {
	if e.Code == nil {
		return ""
	}
	return fmt.Sprintf(" (exit %d)", *e.Code)
}
