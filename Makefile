# emu: build the CLI and the guest agent, the demo service, and run tests.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/emu-dev/emu/internal/cli.Version=$(VERSION)

ARCHES    := amd64 arm64
PREFIX    ?= /usr/local

.PHONY: all emu agents demo-api containers-image demo test test-short cross release install clean

all: emu

# emu carries the guest agents for both architectures (-tags embedagents).
emu: agents
	$(GO) build -tags embedagents -trimpath -ldflags "$(LDFLAGS)" -o bin/emu ./cmd/emu

# The agents run in guests: static, no cgo, linux/amd64 and linux/arm64,
# built where emu's build embeds them from.
agents:
	for a in $(ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" \
			-o internal/agentbin/emu-agent-linux-$$a ./cmd/emu-agent || exit 1; \
	done

install: emu
	install -D -m 0755 bin/emu $(DESTDIR)$(PREFIX)/bin/emu

# Release archives: emu for Linux and macOS on both architectures, each
# with both agents inside, and their SHA-256 sums.
release: agents
	rm -rf dist && mkdir -p dist
	for os in linux darwin; do for a in $(ARCHES); do \
		d=dist/emu-$(VERSION)-$$os-$$a; mkdir -p $$d; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$a $(GO) build -tags embedagents -trimpath -ldflags "$(LDFLAGS)" -o $$d/emu ./cmd/emu || exit 1; \
		cp README.md $$d/; tar -C dist -czf $$d.tar.gz emu-$(VERSION)-$$os-$$a; rm -rf $$d; \
	done; done
	cd dist && sha256sum *.tar.gz > SHA256SUMS

demo-api:
	for a in $(ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags "-s -w" -o examples/demo/bin/linux-$$a/demo-api ./examples/demo/cmd/demo-api || exit 1; \
	done

# The demo API as a container image (docker-archive), for examples/containers.
containers-image: demo-api
	$(GO) run ./examples/containers/mkimage -bin examples/demo/bin/linux-amd64/demo-api -tag demo-api:latest -o examples/containers/images/demo-api.tar

# Build the demo image (the build boots it once to check it) and start it.
demo: all demo-api
	bin/emu up -f examples/demo/emu.yaml

test: cross
	$(GO) test -tags embedagents -timeout 60m ./...

test-short: cross
	$(GO) test -tags embedagents -short ./...

# emu itself also builds for macOS (up/down/status of a bundle built on
# Linux, with HVF or TCG); vet compiles it and its tests for both Macs.
cross: agents
	GOOS=darwin GOARCH=arm64 $(GO) vet -tags embedagents ./cmd/emu ./internal/...
	GOOS=darwin GOARCH=amd64 $(GO) vet -tags embedagents ./cmd/emu ./internal/...

clean:
	rm -rf bin dist internal/agentbin/emu-agent-linux-* examples/demo/bin examples/containers/images
