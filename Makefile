# glance-image-sync: build, test, demo.
# `make test` needs root on Debian 12: it installs and starts RabbitMQ and
# OpenSSH if missing (integration/setup.sh), then runs every test.

# Debian's machines keep Go in /usr/local/go; a fresh shell may not have it on PATH.
export PATH := $(PATH):/usr/local/go/bin
GO        ?= go
BIN       ?= bin/glance-image-sync
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
COMMIT    := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
TEST_TIMEOUT ?= 15m

.PHONY: build test setup vet demo bench clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/glance-image-sync

setup:
	./integration/setup.sh

vet:
	$(GO) vet ./...

# Unit and integration tests; fuzz targets run their seed corpus here.
test: setup vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

demo: setup
	$(GO) run ./integration/demo

bench: setup
	$(GO) run ./integration/bench

clean:
	rm -rf bin
	$(GO) clean -testcache
