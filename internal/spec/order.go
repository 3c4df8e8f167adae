package spec

import (
	"container/heap"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// Arches are the guest architectures a stack can be built for.
var Arches = []string{"amd64", "arm64"}

// ArchVar in a file's src stands for the guest's architecture (amd64,
// arm64), so one stack file names a binary built for each.
const ArchVar = "${arch}"

// FilePath returns the absolute host path of f's source: Src, with ArchVar
// replaced by the stack's architecture, as is when absolute, else relative
// to the stack file's directory.
func (s *Stack) FilePath(f File) string {
	src := filepath.FromSlash(strings.ReplaceAll(f.Src, ArchVar, s.Base.Arch))
	if filepath.IsAbs(src) {
		return filepath.Clean(src)
	}
	return filepath.Join(s.Dir, src)
}

// ForArch returns the stack built for another guest architecture: a copy
// with base.arch set and a kernel named for the old architecture
// (linux-image-cloud-amd64) renamed for the new one. Every file whose src
// names ArchVar must exist for arch; the error names each that does not.
func (s *Stack) ForArch(arch string) (*Stack, error) {
	if !slices.Contains(Arches, arch) {
		return nil, fmt.Errorf("architecture %q: want amd64 or arm64", arch)
	}
	c := *s
	if k, ok := strings.CutSuffix(s.Base.Kernel, "-"+s.Base.Arch); ok {
		c.Base.Kernel = k + "-" + arch
	}
	c.Base.Arch = arch
	var errs []error
	for i, f := range c.Files {
		if !strings.Contains(f.Src, ArchVar) {
			continue
		}
		p := c.FilePath(f)
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			errs = append(errs, fmt.Errorf("%s: files[%d].src: %s for %s: no such regular file %s", s.Path, i, f.Src, arch, p))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}
