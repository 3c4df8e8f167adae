package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid is matched (errors.Is) by every error Load, Parse and Validate
// return: the stack file is missing, malformed or breaks a rule.
var ErrInvalid = errors.New("invalid stack file")

// Error is one problem with a stack file. Validation returns many of them
// joined with errors.Join.
type Error struct {
	File  string // the stack file as the user named it; may be empty
	Line  int    // 1-based; 0 when unknown
	Field string // field path such as services.api.after[0]; may be empty
	Msg   string
	Err   error // an underlying cause, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Is makes every *Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns the underlying cause, such as fs.ErrNotExist.
func (e *Error) Unwrap() error { return e.Err }

// DefaultFile is the stack file's name when none is given.
const DefaultFile = "emu.yaml"

// Load reads, decodes, defaults and validates the stack file at path.
func Load(path string) (*Stack, error) {
	if path == "" {
		path = DefaultFile
	}
	data, err := readBounded(path)
	if err != nil {
		var se *Error
		if errors.As(err, &se) {
			return nil, se
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &Error{
				Msg: fmt.Sprintf("stack file %s not found: run emu in the stack's directory or name the file with -f FILE", path),
				Err: err,
			}
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &Error{File: path, Msg: fmt.Sprintf("read stack file: %v", err), Err: err}
	}
	return Parse(data, path)
}

// readBounded reads the file at path, refusing one over MaxFileSize
// before reading it whole.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > MaxFileSize {
		return nil, tooBig(path, fi.Size())
	}
	// A file that grows while read, or a pipe, is cut one byte past the
	// limit: enough to tell.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, tooBig(path, int64(len(data)))
	}
	return data, nil
}

func tooBig(path string, size int64) *Error {
	return &Error{File: path, Msg: fmt.Sprintf("stack file is %d bytes: at most %d (1 MiB) are read; a stack file describes services, it does not hold data", size, MaxFileSize)}
}

// Parse decodes, defaults and validates a stack file's contents. path names
// the file in messages and sets Stack.Path (made absolute) and Stack.Dir,
// against which relative file sources resolve.
func Parse(data []byte, path string) (s *Stack, err error) {
	if path == "" {
		path = DefaultFile
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("resolve path: %v", err), Err: err}
	}
	defer func() {
		// The YAML library should never panic, but a loader fed user input
		// must not take the process down if it does.
		if r := recover(); r != nil {
			s, err = nil, &Error{File: path, Msg: fmt.Sprintf("decode: internal error: %v", r)}
		}
	}()

	if len(data) > MaxFileSize {
		return nil, tooBig(path, int64(len(data)))
	}
	root, err := decodeNode(data, path)
	if err != nil {
		return nil, err
	}
	if err := checkShape(root, path); err != nil {
		return nil, err
	}
	lines := map[string]int{}
	walkLines(root, "", lines)

	s = &Stack{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil {
		return nil, yamlError(err, path, lines)
	}
	s.Path = abs
	s.Dir = filepath.Dir(abs)
	s.lines = lines
	s.setDefaults()
	if err := s.validate(path, lines); err != nil {
		return nil, err
	}
	return s, nil
}

// decodeNode reads the one YAML document in data, which must be a mapping.
func decodeNode(data []byte, path string) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: path, Msg: "stack file is empty: want at least a name (see `emu schema`)"}
		}
		return nil, yamlError(err, path, nil)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, &Error{File: path, Msg: "more than one YAML document: a stack file holds exactly one (remove the `---` separators)"}
	default:
		return nil, &Error{File: path, Line: next.Line, Msg: "more than one YAML document: a stack file holds exactly one (remove the `---` separators)"}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	switch {
	case doc.Kind == yaml.ScalarNode && doc.Tag == "!!null", doc.Kind == yaml.DocumentNode && len(doc.Content) == 0:
		return nil, &Error{File: path, Msg: "stack file is empty: want at least a name (see `emu schema`)"}
	case doc.Kind != yaml.MappingNode:
		return nil, &Error{File: path, Line: doc.Line, Msg: fmt.Sprintf("want a mapping of fields (name, base, vm, ...) at the top, got %s", kindName(doc))}
	}
	return &root, nil
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		return fmt.Sprintf("%s %q", tagName(n.ShortTag()), n.Value)
	}
	return "nothing"
}

// walkLines maps every field path in the document to its line. Aliases are
// not followed: their paths fall back to the nearest ancestor's line.
func walkLines(n *yaml.Node, path string, lines map[string]int) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			walkLines(c, path, lines)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if _, ok := lines[p]; !ok {
				lines[p] = k.Line
			}
			walkLines(v, p, lines)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			lines[p] = c.Line
			walkLines(c, p, lines)
		}
	}
}

var (
	yamlLineRe  = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	notFoundRe  = regexp.MustCompile(`^field (.*) not found in type (\S+)$`)
	unmarshalRe = regexp.MustCompile("^cannot unmarshal (!!\\w+)(?: `(.*)`)? into (.+)$")
)

// yamlError turns the YAML library's errors into *Error values with the file
// and line up front and messages that read well.
func yamlError(err error, path string, lines map[string]int) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, 0, len(te.Errors))
		for _, m := range te.Errors {
			errs = append(errs, yamlMessage(m, path, lines))
		}
		return errors.Join(errs...)
	}
	return yamlMessage(err.Error(), path, lines)
}

func yamlMessage(m, path string, lines map[string]int) *Error {
	e := &Error{File: path, Msg: strings.TrimPrefix(m, "yaml: ")}
	if sm := yamlLineRe.FindStringSubmatch(m); sm != nil {
		e.Line, _ = strconv.Atoi(sm[1])
		e.Msg = sm[2]
	}
	if sm := notFoundRe.FindStringSubmatch(e.Msg); sm != nil {
		name, typ := sm[1], sm[2]
		e.Field = fieldAtLine(lines, e.Line, name)
		e.Msg = fmt.Sprintf("field %q not found in type %s", name, typ)
		if known := yamlFieldsOf(typ); len(known) > 0 {
			if near := closest(name, known); near != "" {
				e.Msg += fmt.Sprintf("; did you mean %q?", near)
			} else {
				e.Msg += fmt.Sprintf(" (known fields: %s)", strings.Join(known, ", "))
			}
		}
	} else if sm := unmarshalRe.FindStringSubmatch(e.Msg); sm != nil {
		got := tagName(sm[1])
		if sm[2] != "" {
			got += fmt.Sprintf(" %q", sm[2])
		}
		e.Msg = fmt.Sprintf("want %s, got %s", goTypeName(sm[3]), got)
		e.Field = onlyFieldAtLine(lines, e.Line)
	} else if strings.HasPrefix(e.Msg, "invalid ") || strings.HasPrefix(e.Msg, "want ") {
		e.Field = onlyFieldAtLine(lines, e.Line) // from Size, Duration, FileMode
	}
	return e
}

// fieldAtLine finds the path of the key name on the given line.
func fieldAtLine(lines map[string]int, line int, name string) string {
	var found []string
	for p, l := range lines {
		if l == line && (p == name || strings.HasSuffix(p, "."+name)) {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		return ""
	}
	return found[0]
}

// onlyFieldAtLine returns the path of the one field on line, if just one is.
func onlyFieldAtLine(lines map[string]int, line int) string {
	found := ""
	for p, l := range lines {
		if l == line {
			if found != "" {
				return ""
			}
			found = p
		}
	}
	return found
}

func tagName(tag string) string {
	switch tag {
	case "!!str":
		return "string"
	case "!!int":
		return "integer"
	case "!!float":
		return "number"
	case "!!bool":
		return "boolean"
	case "!!null":
		return "null"
	case "!!map":
		return "a mapping"
	case "!!seq":
		return "a list"
	case "!!timestamp":
		return "timestamp"
	case "!!binary":
		return "binary"
	}
	return tag
}

func goTypeName(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "spec."), strings.HasPrefix(t, "*spec."):
		return "a mapping"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "a whole number"
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	}
	return t
}

// yamlTypes are the stack file's struct types by the name yaml gives them.
var yamlTypes = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, v := range []any{Stack{}, Base{}, VM{}, File{}, Service{}, Port{}, Health{}, HTTPHealth{}, Step{}, Slim{}, Optimize{}, Verify{}} {
		t := reflect.TypeOf(v)
		m[t.String()] = t
	}
	return m
}()

func yamlFieldsOf(typ string) []string {
	t, ok := yamlTypes[strings.TrimPrefix(typ, "*")]
	if !ok {
		return nil
	}
	return yamlFields(t)
}

// yamlFields lists the yaml names of a struct's fields in order.
func yamlFields(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// closest returns the known name within edit distance 2 of name, if any.
func closest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(name), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
