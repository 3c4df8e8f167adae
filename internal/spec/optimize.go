package spec

import (
	"reflect"
	"slices"

	"go.yaml.in/yaml/v3"
)

// Compression methods for Optimize.Compress.
const (
	CompressUPX  = "upx"
	CompressNone = "none"
)

// UnmarshalYAML reads `optimize: true|false` or a mapping; a mapping starts
// from the defaults, so `{compress: none}` still strips.
func (o *Optimize) UnmarshalYAML(n *yaml.Node) error {
	switch {
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null":
		*o = Optimize{}
		return nil
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool":
		var on bool
		if err := n.Decode(&on); err != nil {
			return err
		}
		*o = Optimize{}
		if on {
			*o = DefaultOptimize()
		}
		return nil
	case n.Kind != yaml.MappingNode:
		return typeErrorf(n, "want true, false or a mapping (strip, compress, level, lzma, verify), got %s", kindName(n))
	}
	type plain Optimize // without the method, to decode the fields
	v := plain(DefaultOptimize())
	if err := decodeStrict(n, &v, reflect.TypeOf(Optimize{})); err != nil {
		return err
	}
	*o = Optimize(v)
	o.Enabled = true
	return nil
}

// UnmarshalYAML reads a mapping, or a list that is just the arguments.
func (v *Verify) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.SequenceNode:
		*v = Verify{}
		return n.Decode(&v.Args)
	case yaml.MappingNode:
		type plain Verify
		var p plain
		if err := decodeStrict(n, &p, reflect.TypeOf(Verify{})); err != nil {
			return err
		}
		*v = Verify(p)
		return nil
	}
	return typeErrorf(n, "want a mapping (args, exit, output, timeout) or a list of arguments, got %s", kindName(n))
}

// decodeStrict decodes the mapping n into v, first reporting keys that typ
// lacks: a node's own Decode does not inherit the decoder's KnownFields.
func decodeStrict(n *yaml.Node, v any, typ reflect.Type) error {
	known := yamlFields(typ)
	var msgs []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !slices.Contains(known, k.Value) {
			msgs = append(msgs, typeErrorf(k, "field %s not found in type %s", k.Value, typ.String()).(*yaml.TypeError).Errors...)
		}
	}
	if err := n.Decode(v); err != nil {
		if te, ok := err.(*yaml.TypeError); ok {
			msgs = append(msgs, te.Errors...)
		} else {
			return err
		}
	}
	if len(msgs) > 0 {
		return &yaml.TypeError{Errors: msgs}
	}
	return nil
}
