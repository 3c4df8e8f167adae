package spec

import (
	"bytes"
	_ "embed"
)

//go:embed schema.json
var schema []byte

// Schema returns the stack file's JSON Schema (draft 2020-12), indented, for
// editors and `emu schema`.
func Schema() []byte { return bytes.Clone(schema) }
