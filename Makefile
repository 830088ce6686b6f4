# pitr — see README.md. Every target works on a fresh clone: `make test`
# installs the servers the tests start (MinIO, Azurite, fake-gcs-server,
# protoc plugins) into .tools/ first, and reuses them afterwards.

GO       ?= go
PKGS     ?= ./...
# Packages whose tests run again under the race detector: all their tests
# (integration ones included), and the -short ones of the rest.
# The agent's integration tests are -short only here: their workload
# client (client-go) is made after the agents' PD clients, and client-go's
# NewClient rewrites the PD client's package-level metrics those read.
RACE_PKGS ?= ./flush/... ./merge/... ./coordinator/... ./restore/... ./connector/... ./snapshot/... ./checksum/... ./volsnap/... ./volume/...
RACE_SHORT_PKGS ?= ./agent/... ./playground/cluster/... ./playground/mvcc/... ./storage/... ./keyspace/...
# How long make test fuzzes each decoder (make fuzz: FUZZTIME, default 10s).
TEST_FUZZTIME ?= 5s
TEST_TIMEOUT ?= 25m
# Version linked into packaged binaries (pitr --version) and named by the
# .deb and the image; "dev" outside a git checkout.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Packaging runs in deploy/package, a module of its own (nfpm and
# go-containerregistry must not move this module's pins).
PKG_GO := cd deploy/package && GOWORK=off $(GO)

.PHONY: all build test test-short race fuzz bench demo lint fmt vet proto tools clean k8s-check obs-check static package image package-check

all: build

build:
	$(GO) build -o bin/pitr ./cmd/pitr
	$(GO) build -o bin/pitr-playground ./cmd/pitr-playground

# A static binary, as the .deb and the image ship it.
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/pitr-static ./cmd/pitr

# dist/pitr_<version>_<arch>.deb: apt install ./dist/pitr_*.deb (README.md).
package: static
	$(PKG_GO) run ./cmd/mkdeb -binary $(CURDIR)/bin/pitr-static -root $(CURDIR) -version $(VERSION) -out $(CURDIR)/dist

# dist/image-oci: an OCI image layout, built without a container daemon.
image: static
	$(PKG_GO) run ./cmd/mkimage -binary $(CURDIR)/bin/pitr-static -root $(CURDIR) -version $(VERSION) -out $(CURDIR)/dist/image-oci

# Builds the .deb and the image into a temp dir and checks them with
# dpkg-deb, systemd-analyze and go-containerregistry (deploy/package tests).
package-check: static
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	(cd deploy/package && GOWORK=off $(GO) run ./cmd/mkdeb -binary $(CURDIR)/bin/pitr-static -root $(CURDIR) -version $(VERSION) -out "$$tmp") && \
	(cd deploy/package && GOWORK=off $(GO) run ./cmd/mkimage -binary $(CURDIR)/bin/pitr-static -root $(CURDIR) -version $(VERSION) -out "$$tmp/image-oci") && \
	dpkg-deb --info "$$tmp"/pitr_*.deb >/dev/null && dpkg-deb --contents "$$tmp"/pitr_*.deb && \
	(cd deploy/package && GOWORK=off $(GO) vet ./... && GOWORK=off $(GO) test -count=1 ./...)

tools:
	bash scripts/tools.sh

lint: fmt vet
	$(GO) test -count=1 -run TestDependencyDirection .

fmt:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Alert rules and their promtool unit tests (promtool: make tools).
obs-check:
	PATH="$(CURDIR)/.tools/bin:$$PATH" promtool check rules deploy/prometheus/pitr-alerts.yml
	PATH="$(CURDIR)/.tools/bin:$$PATH" promtool test rules deploy/prometheus/pitr-alerts_test.yml

vet:
	$(GO) vet $(PKGS)

test: tools lint obs-check
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	$(MAKE) k8s-check
	$(MAKE) package-check
	$(MAKE) race
	FUZZTIME=$(TEST_FUZZTIME) bash scripts/fuzz.sh

race:
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -count=1 -race -timeout $(TEST_TIMEOUT) $(RACE_PKGS)
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -count=1 -race -short -timeout $(TEST_TIMEOUT) $(RACE_SHORT_PKGS)

fuzz:
	bash scripts/fuzz.sh

# The Kubernetes manifests (deploy/kubernetes): a module of its own, so the
# root's ./... neither builds nor depends on kustomize and the API types.
k8s-check:
	cd deploy/kubernetes/check && $(GO) vet ./... && $(GO) test -count=1 ./...

test-short:
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -short $(PKGS)

bench: tools
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) run ./cmd/pitr-bench

demo:
	$(GO) run ./cmd/pitr-playground demo

proto:
	bash proto/gen.sh

clean:
	rm -rf bin dist
