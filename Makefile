# pitr — see README.md. Every target works on a fresh clone: `make test`
# installs the servers the tests start (MinIO, Azurite, fake-gcs-server,
# protoc plugins) into .tools/ first, and reuses them afterwards.

GO       ?= go
PKGS     ?= ./...
# Packages whose tests run again under the race detector.
RACE_PKGS ?= ./playground/cluster/... ./playground/mvcc/... ./storage/... ./flush/... ./merge/... ./agent/... ./coordinator/...
TEST_TIMEOUT ?= 25m

.PHONY: all build test test-short race bench demo lint fmt vet proto tools clean

all: build

build:
	$(GO) build -o bin/pitr ./cmd/pitr
	$(GO) build -o bin/pitr-playground ./cmd/pitr-playground

tools:
	bash scripts/tools.sh

lint: fmt vet
	$(GO) test -count=1 -run TestDependencyDirection .

fmt:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

test: tools lint
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -count=1 -race -short -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

test-short:
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) test -short $(PKGS)

bench: tools
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(GO) run ./cmd/pitr-bench

demo:
	$(GO) run ./cmd/pitr-playground demo

proto:
	bash proto/gen.sh

clean:
	rm -rf bin
