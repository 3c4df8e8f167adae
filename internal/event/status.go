package event

import "time"

// State is where a stage, step or service stands.
type State string

const (
	Pending   State = "pending"
	Running   State = "running"
	Succeeded State = "done"
	Failing   State = "failed"
	Starting  State = "starting"
	Healthy   State = "healthy"
	Unhealthy State = "unhealthy"
)

// TailLines is how many output lines of a step the status keeps.
const TailLines = 50

// Item is one stage, step or service.
type Item struct {
	Name   string
	State  State
	Start  time.Time
	End    time.Time
	Msg    string
	Code   *int
	Fields map[string]string
	// Tail holds the last TailLines output lines (steps only).
	Tail []string
}

// Elapsed is the item's duration, up to now when it is still running.
func (it Item) Elapsed(now time.Time) time.Duration {
	if it.Start.IsZero() {
		return 0
	}
	if it.End.IsZero() {
		return now.Sub(it.Start)
	}
	return it.End.Sub(it.Start)
}

// Status is what a stream of events amounts to. The live view, the plain
// lines, --json and `emu status` all read it.
type Status struct {
	Stages   []Item
	Steps    []Item
	Services []Item
	Hello    *Event
	Ready    bool
	Done     bool
	Failed   bool
	// Err is the failure's message; FailedName the stage, step or service
	// that failed, when one did.
	Err        string
	FailedName string
	Start      time.Time
	Last       time.Time
	// Ports holds what the agent found at each forwarded guest port, by
	// SERVICE.PORT: "relayed from 127.0.0.1:5432", "nothing listens on
	// guest port 7002" (a log event with the field FieldPort).
	Ports map[string]string
}

// FieldPort names the forwarded port a log event is about; FieldReach
// says, in a few words, what listens there.
const (
	FieldPort  = "port"
	FieldReach = "reach"
)

// Fold applies e to s and returns the result. s is not shared with the
// result's slices only when the caller does not keep s: Fold is meant to be
// used as s = Fold(s, e).
func Fold(s Status, e Event) Status {
	if s.Start.IsZero() {
		s.Start = e.Time
	}
	s.Last = e.Time
	switch e.Kind {
	case Hello:
		h := e
		s.Hello = &h
	case StageStart:
		s.Stages = upsert(s.Stages, e.Name, func(it *Item) {
			*it = Item{Name: e.Name, State: Running, Start: e.Time, Msg: e.Msg}
		})
	case StageDone, StageFailed:
		s.Stages = upsert(s.Stages, e.Name, func(it *Item) {
			finish(it, e)
			it.Fields = e.Fields
		})
	case StageProgress:
		s.Stages = upsert(s.Stages, e.Name, func(it *Item) {
			if it.State == Pending {
				it.State, it.Start = Running, e.Time
			}
			it.Fields = e.Fields
		})
	case StepStart:
		s.Steps = upsert(s.Steps, e.Name, func(it *Item) {
			*it = Item{Name: e.Name, State: Running, Start: e.Time}
		})
	case StepOutput:
		s.Steps = upsert(s.Steps, e.Name, func(it *Item) {
			it.Tail = append(it.Tail, e.Msg)
			if n := len(it.Tail); n > TailLines {
				it.Tail = append([]string(nil), it.Tail[n-TailLines:]...)
			}
		})
	case StepDone, StepFailed:
		s.Steps = upsert(s.Steps, e.Name, func(it *Item) { finish(it, e) })
	case ServiceStarting:
		s.Services = upsert(s.Services, e.Name, func(it *Item) {
			it.State, it.Start, it.End, it.Msg = Starting, e.Time, time.Time{}, e.Msg
			if e.Fields != nil {
				it.Fields = e.Fields
			}
		})
	case ServiceHealthy, ServiceUnhealthy:
		s.Services = upsert(s.Services, e.Name, func(it *Item) {
			it.State, it.Msg = Healthy, e.Msg
			if e.Kind == ServiceUnhealthy {
				it.State = Unhealthy
			}
			if it.Start.IsZero() {
				it.Start = e.Time
			}
			it.End = e.Time
			if e.Fields != nil {
				it.Fields = e.Fields
			}
		})
	case Log:
		if port, reach := e.Fields[FieldPort], e.Fields[FieldReach]; port != "" && reach != "" {
			m := make(map[string]string, len(s.Ports)+1)
			for k, v := range s.Ports {
				m[k] = v
			}
			m[e.Name+"."+port] = reach
			s.Ports = m
		}
	case Ready:
		s.Ready = true
	case Done:
		s.Done = true
	case Failed:
		s.Failed = true
		s.Err = e.Msg
		if e.Name != "" {
			s.FailedName = e.Name
		}
	}
	return s
}

func finish(it *Item, e Event) {
	it.End = e.Time
	it.Code = e.Code
	if e.Msg != "" {
		it.Msg = e.Msg
	}
	it.State = Succeeded
	if e.Kind == StageFailed || e.Kind == StepFailed {
		it.State = Failing
	}
}

// upsert applies f to the item named name, appending a new one when there is
// none yet.
func upsert(items []Item, name string, f func(*Item)) []Item {
	for i := range items {
		if items[i].Name == name {
			f(&items[i])
			return items
		}
	}
	items = append(items, Item{Name: name, State: Pending})
	f(&items[len(items)-1])
	return items
}

// FoldAll folds every event into a fresh Status.
func FoldAll(events []Event) Status {
	var s Status
	for _, e := range events {
		s = Fold(s, e)
	}
	return s
}

// Running returns the step or stage currently running, innermost first, or
// "" when none is.
func (s Status) Running() string {
	for i := len(s.Steps) - 1; i >= 0; i-- {
		if s.Steps[i].State == Running {
			return s.Steps[i].Name
		}
	}
	for i := len(s.Stages) - 1; i >= 0; i-- {
		if s.Stages[i].State == Running {
			return s.Stages[i].Name
		}
	}
	return ""
}
