package spec

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Bounds on what a stack file may be and expand to. A real stack is a few
// KiB with tens of services; these are far above any, and keep a hostile
// or broken file from taking minutes and gigabytes to load. The YAML
// library checks a mapping's keys for duplicates pairwise, so a mapping's
// size bounds that work: with every mapping at most MaxMappingEntries,
// decoding costs at most that many key comparisons per entry.
const (
	// MaxFileSize is the largest stack file read.
	MaxFileSize = 1 << 20
	// MaxDepth bounds the nesting of mappings and lists.
	MaxDepth = 64
	// MaxMappingEntries bounds one mapping (services, env, …).
	MaxMappingEntries = 256
	// MaxSequenceEntries bounds one list (bake steps, a command, …).
	MaxSequenceEntries = 10000
	// MaxNodes bounds the document's values with every alias expanded,
	// as the decoder will see them.
	MaxNodes = 1000000
)

// checkShape refuses a document nested too deep, with a mapping or list too
// long, or that expands past MaxNodes through aliases. It walks each node
// once: an alias's expansion is counted from its anchor's, memoized, so an
// alias bomb costs what its text costs.
func checkShape(root *yaml.Node, path string) error {
	sizes := map[*yaml.Node]int{}
	// field and line name where n sits: the key it is the value of (a
	// mapping's Line is its first key's, not its own key's).
	var walk func(n *yaml.Node, depth int, field string, line int) (int, error)
	walk = func(n *yaml.Node, depth int, field string, line int) (int, error) {
		if n == nil {
			return 0, nil
		}
		if size, ok := sizes[n]; ok {
			return size, nil
		}
		if line == 0 {
			line = n.Line
		}
		where := ""
		if field != "" {
			where = field + ": "
		}
		if depth > MaxDepth {
			// The field's path is as deep: name where the nesting starts.
			if i := strings.Index(where, "]["); i > 0 {
				where = where[:i+1] + "…: "
			}
			return 0, &Error{File: path, Line: line, Msg: fmt.Sprintf("%snested more than %d levels deep", where, MaxDepth)}
		}
		switch {
		case n.Kind == yaml.MappingNode && len(n.Content)/2 > MaxMappingEntries:
			return 0, &Error{File: path, Line: line, Msg: fmt.Sprintf("%sa mapping with %d entries: at most %d", where, len(n.Content)/2, MaxMappingEntries)}
		case n.Kind == yaml.SequenceNode && len(n.Content) > MaxSequenceEntries:
			return 0, &Error{File: path, Line: line, Msg: fmt.Sprintf("%sa list with %d entries: at most %d", where, len(n.Content), MaxSequenceEntries)}
		}
		// Mark the node before descending: an alias cycle counts as
		// nothing more instead of recursing forever.
		sizes[n] = 1
		size := 1
		add := func(c *yaml.Node, field string, line int) error {
			s, err := walk(c, depth+1, field, line)
			if err != nil {
				return err
			}
			size += s
			if size > MaxNodes {
				return &Error{File: path, Line: n.Line, Msg: fmt.Sprintf("%sholds more than %d values, each alias counted as what it stands for", where, MaxNodes)}
			}
			return nil
		}
		switch n.Kind {
		case yaml.AliasNode:
			if err := add(n.Alias, field, n.Line); err != nil {
				return 0, err
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				sub := k.Value
				if field != "" {
					sub = field + "." + k.Value
				}
				if err := add(k, sub, k.Line); err != nil {
					return 0, err
				}
				if err := add(v, sub, k.Line); err != nil {
					return 0, err
				}
			}
		default:
			for i, c := range n.Content {
				sub := field
				if n.Kind == yaml.SequenceNode {
					sub = fmt.Sprintf("%s[%d]", field, i)
				}
				if err := add(c, sub, c.Line); err != nil {
					return 0, err
				}
			}
		}
		sizes[n] = size
		return size, nil
	}
	size, err := walk(root, 0, "", 0)
	if err == nil && size > MaxNodes {
		err = &Error{File: path, Line: root.Line, Msg: fmt.Sprintf("holds more than %d values, each alias counted as what it stands for", MaxNodes)}
	}
	return err
}
