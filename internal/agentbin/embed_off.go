//go:build !embedagents

package agentbin

// This build carries no agents (go build or go install without the
// embedagents tag): see Find for where they are looked for instead.
func embedded(arch string) ([]byte, bool) { return nil, false }
