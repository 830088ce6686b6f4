#!/usr/bin/env bash
# Runs every fuzz target of the module (func FuzzX in a _test.go file) for
# FUZZTIME each (default 10s): the decoders of everything pitr reads back
# (Parquet rows, objects, spill runs, keys, timestamps). A failure leaves
# its input in the package's testdata/fuzz/ for `go test` to replay.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${FUZZTIME:-10s}"
n=0
while IFS= read -r dir; do
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
    echo "fuzz ./$dir $f for $t"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "./$dir"
    n=$((n + 1))
  done
done < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sed 's|^\./||' | sort -u)
echo "fuzz: $n targets, $t each"
