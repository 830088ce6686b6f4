#!/usr/bin/env bash
# Regenerates the Go code of proto/*.proto into the directory given (default:
# proto/ itself). Needs protoc and the plugins pinned below on PATH or in
# .tools/bin (scripts/tools.sh installs them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/proto}"
export PATH="$root/.tools/bin:$PATH"
command -v protoc >/dev/null || { echo "proto: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
command -v protoc-gen-go >/dev/null || { echo "proto: protoc-gen-go not found (scripts/tools.sh)" >&2; exit 1; }
command -v protoc-gen-go-grpc >/dev/null || { echo "proto: protoc-gen-go-grpc not found (scripts/tools.sh)" >&2; exit 1; }
cd "$root/proto"
protoc --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  -I . pitr.proto
# tipb: TiDB's coprocessor messages pitr speaks (no gRPC services).
protoc --go_out="$out" --go_opt=paths=source_relative \
  -I . tipb/checksum.proto
