#!/usr/bin/env bash
# tools.sh installs the external servers and tools the tests need into
# <repo>/.tools (git-ignored). It is idempotent: each tool is skipped when it
# is already present. It exits non-zero if any install fails.
#
#   .tools/bin/minio             S3 server      (go install, slow: several minutes)
#   .tools/bin/fake-gcs-server   GCS emulator   (go install)
#   .tools/node_modules/.bin/azurite-blob   Azure Blob emulator (npm)
#   .tools/node_modules/@duckdb/node-api    DuckDB for Node (npm; used by other engineers)
#   .tools/bin/promtool          alert rule checks (symlink; apt prometheus)

#   dpkg-deb, systemd-analyze   packaging checks (apt-get, as root, when missing)
#
# Environment:
#   PITR_TOOLS_FORCE=1   reinstall even when present
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
mkdir -p "$BIN"

# Pinned versions. Each one is known to build/install with this repo's Go
# toolchain (Go 1.26) and Node 20.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
AZURITE_VERSION="3.35.0" # runs on Node 20; newer releases are not needed by the tests
DUCKDB_NODE_VERSION="${DUCKDB_NODE_VERSION:-1.5.6-r.1}"
# protoc plugins for `make proto` and the generated-code staleness test.
PROTOC_GEN_GO_VERSION="v1.34.2"
# v1.3.0 targets grpc SupportPackageIsVersion7, which the pinned grpc v1.63.2 has.
PROTOC_GEN_GO_GRPC_VERSION="v1.3.0"

FORCE="${PITR_TOOLS_FORCE:-}"

log() { printf 'tools.sh: %s\n' "$*"; }

present() { [[ -z "$FORCE" && -x "$1" ]]; }

go_install() { # name pkg@version
	local name="$1" pkg="$2"
	if present "$BIN/$name"; then
		log "$name: already at $BIN/$name, skipping"
		return 0
	fi
	log "$name: go install $pkg (GOBIN=$BIN)"
	# Build outside the repo module so its go.mod pins do not interfere.
	(cd "$TOOLS" && GOBIN="$BIN" GOFLAGS=-buildvcs=false GOWORK=off go install "$pkg")
	[[ -x "$BIN/$name" ]] || { log "$name: go install succeeded but $BIN/$name is missing"; return 1; }
	log "$name: installed"
}

npm_install() { # check-path spec
	local check="$1" spec="$2"
	if [[ -z "$FORCE" && -e "$check" ]]; then
		log "$spec: already in $TOOLS/node_modules, skipping"
		return 0
	fi
	log "$spec: npm install --prefix $TOOLS"
	npm install --no-audit --no-fund --prefix "$TOOLS" "$spec"
	[[ -e "$check" ]] || { log "$spec: installed but $check is missing"; return 1; }
	log "$spec: installed"
}

command -v go >/dev/null || { log "go not found in PATH"; exit 1; }
command -v npm >/dev/null || { log "npm not found in PATH"; exit 1; }

# npm needs a package.json in the prefix to keep the install local.
[[ -f "$TOOLS/package.json" ]] || echo '{"name":"pitr-tools","private":true}' >"$TOOLS/package.json"

go_install fake-gcs-server "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
npm_install "$TOOLS/node_modules/.bin/azurite-blob" "azurite@$AZURITE_VERSION"
duck_spec="@duckdb/node-api"
[[ -n "$DUCKDB_NODE_VERSION" ]] && duck_spec="@duckdb/node-api@$DUCKDB_NODE_VERSION"
npm_install "$TOOLS/node_modules/@duckdb/node-api/package.json" "$duck_spec"
# The package pulls a prebuilt native binding from the npm registry
# (@duckdb/node-bindings-linux-x64); make sure it actually loads here.
if ! (cd "$TOOLS" && node -e "require('@duckdb/node-api')" >/dev/null); then
	log "@duckdb/node-api: installed but does not load (native binding missing?)"
	exit 1
fi
log "@duckdb/node-api: loads"
go_install minio "github.com/minio/minio@$MINIO_VERSION"
go_install protoc-gen-go "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
go_install protoc-gen-go-grpc "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"

# protoc itself comes from Debian's protobuf-compiler (3.21). Installed when
# running as root with apt (CI, fresh machines); otherwise the staleness test
# skips locally and fails in CI.
if command -v protoc >/dev/null; then
	log "protoc: $(protoc --version), skipping"
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
	log "protoc: apt-get install protobuf-compiler"
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
	log "protoc: $(protoc --version)"
elif [[ -n "${CI:-}" ]]; then
	log "protoc: not installed and cannot apt-get install it (not root)"
	exit 1
else
	log "protoc: not installed (apt-get install protobuf-compiler); the proto staleness test will skip"
fi

# promtool checks and unit-tests deploy/prometheus (make obs-check). It
# comes from PATH, else from Debian's prometheus package (/usr/bin/promtool).
if [[ -n "$FORCE" || ! -x "$BIN/promtool" ]]; then
	if ! command -v promtool >/dev/null; then
		if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
			log "promtool: apt-get install prometheus"
			export DEBIAN_FRONTEND=noninteractive
			apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
				{ apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } ||
				{ log "promtool: apt-get install prometheus failed"; exit 1; }
		else
			log "promtool: not on PATH and cannot apt-get install prometheus (not root); install promtool"
			exit 1
		fi
	fi
	ln -sf "$(command -v promtool)" "$BIN/promtool"
	[[ -x "$BIN/promtool" ]] || { log "promtool: $BIN/promtool is not executable"; exit 1; }
	log "promtool: linked $BIN/promtool -> $(command -v promtool)"
else
	log "promtool: already at $BIN/promtool, skipping"
fi

# The packaging tests (deploy/package, make package-check) read the .deb
# back with dpkg-deb and check the units with systemd-analyze verify. Debian
# has dpkg everywhere; systemd is missing from minimal and container
# installs. Without them make test cannot pass, so this fails when it
# cannot install them.
apt_tool() { # command package
	local cmd="$1" pkg="$2"
	if command -v "$cmd" >/dev/null; then
		log "$cmd: $(command -v "$cmd"), skipping"
	elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
		log "$cmd: apt-get install $pkg"
		apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
		command -v "$cmd" >/dev/null || { log "$cmd: $pkg installed but $cmd is missing"; exit 1; }
	else
		log "$cmd: not installed and cannot apt-get install $pkg (not root, or no apt-get)"
		exit 1
	fi
}
apt_tool dpkg-deb dpkg
apt_tool systemd-analyze systemd

log "done: $(ls "$BIN" | tr '\n' ' ')"
