//go:build embedagents

package agentbin

import _ "embed"

// The agents, built by `make agents` into this directory before emu is
// built with -tags embedagents.
var (
	//go:embed emu-agent-linux-amd64
	amd64Agent []byte
	//go:embed emu-agent-linux-arm64
	arm64Agent []byte
)

func embedded(arch string) ([]byte, bool) {
	switch arch {
	case "amd64":
		return amd64Agent, true
	case "arm64":
		return arm64Agent, true
	}
	return nil, false
}
