# emu: build the CLI and the guest agent, the demo service, and run tests.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/emu-dev/emu/internal/cli.Version=$(VERSION)

.PHONY: all emu agent demo-api containers-image demo test test-short cross clean

all: emu agent

emu:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/emu ./cmd/emu

# The agent runs in the guest: static, no cgo, linux/amd64.
agent:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/emu-agent ./cmd/emu-agent

demo-api:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "-s -w" -o examples/demo/bin/demo-api ./examples/demo/cmd/demo-api

# The demo API as a container image (docker-archive), for examples/containers.
containers-image: demo-api
	$(GO) run ./examples/containers/mkimage -bin examples/demo/bin/demo-api -tag demo-api:latest -o examples/containers/images/demo-api.tar

# Build the demo image (the build boots it once to check it) and start it.
demo: all demo-api
	bin/emu up -f examples/demo/emu.yaml

test: cross
	$(GO) test -timeout 60m ./...

test-short: cross
	$(GO) test -short ./...

# emu itself also builds for macOS (up/down/status of a bundle built on
# Linux, with HVF or TCG); vet compiles it and its tests for both Macs.
cross:
	GOOS=darwin GOARCH=arm64 $(GO) vet ./cmd/emu ./internal/...
	GOOS=darwin GOARCH=amd64 $(GO) vet ./cmd/emu ./internal/...

clean:
	rm -rf bin examples/demo/bin examples/containers/images
