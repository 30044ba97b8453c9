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

.PHONY: build dist image deb test setup vet demo bench bench-scale bench-stream clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/glance-image-sync

# A release tarball: the static binary, an example config generated from the
# option table, the systemd units and the cron line. Reproducible from a
# commit: file times come from the commit (SOURCE_DATE_EPOCH), the build has
# no paths or build id, and tar and gzip store no owner, order or time of
# their own, so two runs give the same sha256.
DIST_DIR  ?= bin/dist
GOOS      ?= $(shell $(GO) env GOOS)
GOARCH    ?= $(shell $(GO) env GOARCH)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DIST_NAME := glance-image-sync-$(VERSION)-$(GOOS)-$(GOARCH)

dist:
	rm -rf $(DIST_DIR)/$(DIST_NAME) $(DIST_DIR)/$(DIST_NAME).tar.gz
	mkdir -p $(DIST_DIR)/$(DIST_NAME)
	CGO_ENABLED=0 GOOS=$(GOOS) GOARCH=$(GOARCH) $(GO) build -trimpath -buildvcs=false \
		-ldflags "$(LDFLAGS) -buildid=" -o $(DIST_DIR)/$(DIST_NAME)/glance-image-sync ./cmd/glance-image-sync
	$(GO) run ./cmd/glance-image-sync config-example > $(DIST_DIR)/$(DIST_NAME)/glance-image-sync.conf.example
	cp cmd/glance-image-sync/dist/* $(DIST_DIR)/$(DIST_NAME)/
	chmod 0755 $(DIST_DIR)/$(DIST_NAME) $(DIST_DIR)/$(DIST_NAME)/glance-image-sync
	find $(DIST_DIR)/$(DIST_NAME) -type f ! -name glance-image-sync -exec chmod 0644 {} +
	tar --format=gnu --sort=name --mtime=@$(SOURCE_DATE_EPOCH) --owner=0 --group=0 --numeric-owner \
		-C $(DIST_DIR) -cf - $(DIST_NAME) | gzip -n -9 > $(DIST_DIR)/$(DIST_NAME).tar.gz
	cd $(DIST_DIR) && sha256sum $(DIST_NAME).tar.gz | tee $(DIST_NAME).tar.gz.sha256

# The container image (issue 15): the static binary built as for dist, the
# example config and the licences of what it links, in one layer, as user
# glance 42415:42415 (Kolla's uid), written by cmd/mkimage (no
# container daemon) as a tarball for `docker load` / `podman load`.
# Reproducible like dist: times from SOURCE_DATE_EPOCH, sorted entries.
IMAGE_DIR ?= bin/image
IMAGE_TAG ?= glance-image-sync:$(VERSION)
IMAGE_SOURCE ?= https://github.com/glance-image-sync/glance-image-sync
IMAGE_TAR := $(IMAGE_DIR)/glance-image-sync-$(VERSION)-image-$(GOARCH).tar

image:
	rm -rf $(IMAGE_DIR)/stage $(IMAGE_TAR)
	mkdir -p $(IMAGE_DIR)/stage
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -buildvcs=false \
		-ldflags "$(LDFLAGS) -buildid=" -o $(IMAGE_DIR)/stage/glance-image-sync ./cmd/glance-image-sync
	$(GO) run ./cmd/glance-image-sync config-example > $(IMAGE_DIR)/stage/glance-image-sync.conf.example
	./cmd/mkdeb/licenses.sh $(IMAGE_DIR)/stage/glance-image-sync $(IMAGE_DIR)/stage/licenses
	$(GO) run ./cmd/mkimage -binary $(IMAGE_DIR)/stage/glance-image-sync \
		-example $(IMAGE_DIR)/stage/glance-image-sync.conf.example -licenses $(IMAGE_DIR)/stage/licenses \
		-version $(VERSION) -revision $(COMMIT) -source $(IMAGE_SOURCE) -epoch $(SOURCE_DATE_EPOCH) \
		-arch $(GOARCH) -tag $(IMAGE_TAG) -o $(IMAGE_TAR)
	rm -rf $(IMAGE_DIR)/stage

# The Debian package (issue 15), built with dpkg-deb by cmd/mkdeb/mkdeb.sh:
# /usr/bin/glance-image-sync (built as for dist), the systemd units (not
# enabled: no maintainer scripts), the cron line and example config as docs,
# copyright and the licences of what the binary links. A commit that
# `git describe` names v1.2 gives 1.2; any other gives 0~git<date>.<commit>.
DEB_DIR ?= bin/deb
DEB_MAINTAINER ?= glance-image-sync developers <glance-image-sync@example.org>
DEB_ARCH  ?= $(if $(filter 386,$(GOARCH)),i386,$(if $(filter arm,$(GOARCH)),armhf,$(GOARCH)))

deb:
	rm -rf $(DEB_DIR)/stage
	mkdir -p $(DEB_DIR)/stage
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -buildvcs=false \
		-ldflags "$(LDFLAGS) -buildid=" -o $(DEB_DIR)/stage/glance-image-sync ./cmd/glance-image-sync
	$(GO) run ./cmd/glance-image-sync config-example > $(DEB_DIR)/stage/glance-image-sync.conf.example
	$(GO) run ./cmd/glance-image-sync help > $(DEB_DIR)/stage/help.txt
	./cmd/mkdeb/licenses.sh $(DEB_DIR)/stage/glance-image-sync $(DEB_DIR)/stage/licenses
	VERSION=$(VERSION) COMMIT=$(COMMIT) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) DEB_ARCH=$(DEB_ARCH) \
		DEB_MAINTAINER='$(DEB_MAINTAINER)' ./cmd/mkdeb/mkdeb.sh $(DEB_DIR)/stage $(DEB_DIR)
	rm -rf $(DEB_DIR)/stage

setup:
	./integration/setup.sh

vet:
	$(GO) vet ./...

# Unit and integration tests; fuzz targets run their seed corpus here.
test: setup vet chaos
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Fault-injection and hostile-input suite (integration/chaos, build tag chaos):
# its own RabbitMQ node, run serially; prints one line per fault.
CHAOS_REPORT ?= $(CURDIR)/bin/chaos-report.txt
chaos: setup
	@mkdir -p $(dir $(CHAOS_REPORT))
	$(GO) vet -tags chaos ./integration/chaos
	CHAOS_REPORT=$(CHAOS_REPORT) $(GO) test -tags chaos -count=1 -timeout $(TEST_TIMEOUT) ./integration/chaos
	@cat $(CHAOS_REPORT)

demo: setup
	$(GO) run ./integration/demo

bench: setup
	$(GO) run ./integration/bench $(BENCH_ARGS)

# Time for one image to reach every node when all sync at once, each sshd's
# uplink capped with tc on lo: chain vs publisher-only (issue 7). Root; minutes.
# BENCH_SCALE_ARGS e.g. -nodes 4 -size 256 -rate 20
bench-scale: setup
	$(GO) run ./integration/benchscale $(BENCH_SCALE_ARGS)

# Issue 17's load for 5 minutes: watch --duplicate on three nodes, a 256 KiB
# image every 0.5 s on node1, every third deleted 1.5 s later. Prints p50/p99
# from event to verified on every node, and the daemons' RSS and open files
# first and last.
bench-stream: setup
	STREAM_DURATION=5m $(GO) test -count=1 -timeout 20m -run 'TestWatchSteadyStream$$' -v ./integration | grep -E 'stream_test|^(---|ok|FAIL)'

clean:
	rm -rf bin
	$(GO) clean -testcache
