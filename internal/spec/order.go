package spec

import (
	"path/filepath"
	"sort"
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
	var ready, order []string
	for name, d := range indeg {
		if d == 0 {
			ready = append(ready, name)
		}
	}
	for len(ready) > 0 {
		sort.Strings(ready)
		name := ready[0]
		ready = ready[1:]
		order = append(order, name)
		delete(indeg, name)
		for _, m := range next[name] {
			indeg[m]--
			if indeg[m] == 0 {
				ready = append(ready, m)
			}
		}
	}
	return append(order, sortedKeys(indeg)...)
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
