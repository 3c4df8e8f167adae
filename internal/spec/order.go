package spec

import (
	"container/heap"
	"path/filepath"
)

// ServiceNames returns the services' names, sorted.
func (s *Stack) ServiceNames() []string { return sortedKeys(s.Services) }

// StartOrder returns the service names so that each comes after every
// service in its After list; among services free to start, the name decides.
// It is meaningful only for a validated stack; on a cycle, the services in it
// come last, sorted by name.
func (s *Stack) StartOrder() []string {
	indeg := map[string]int{}
	next := map[string][]string{} // dependency -> dependents
	for _, name := range s.ServiceNames() {
		indeg[name] += 0
		seen := map[string]bool{}
		for _, dep := range s.Services[name].After {
			if _, ok := s.Services[dep]; !ok || seen[dep] {
				continue
			}
			seen[dep] = true
			indeg[name]++
			next[dep] = append(next[dep], name)
		}
	}
	ready := &names{}
	for name, d := range indeg {
		if d == 0 {
			heap.Push(ready, name)
		}
	}
	var order []string
	for ready.Len() > 0 {
		name := heap.Pop(ready).(string)
		order = append(order, name)
		delete(indeg, name)
		for _, m := range next[name] {
			indeg[m]--
			if indeg[m] == 0 {
				heap.Push(ready, m)
			}
		}
	}
	return append(order, sortedKeys(indeg)...)
}

// names is a min-heap of service names: the next to start is the smallest
// free one, in O(log n) rather than a sort per pick.
type names []string

func (h names) Len() int           { return len(h) }
func (h names) Less(i, j int) bool { return h[i] < h[j] }
func (h names) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *names) Push(x any)        { *h = append(*h, x.(string)) }
func (h *names) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// FilePath returns the absolute host path of f's source: Src as is when
// absolute, else relative to the stack file's directory.
func (s *Stack) FilePath(f File) string {
	src := filepath.FromSlash(f.Src)
	if filepath.IsAbs(src) {
		return filepath.Clean(src)
	}
	return filepath.Join(s.Dir, src)
}
