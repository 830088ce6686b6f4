package logfile

import (
	"encoding/hex"
	"encoding/json"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// duckdb runs sql in DuckDB (node + @duckdb/node-api from scripts/tools.sh)
// and returns the rows. Missing tools skip the test locally and fail it in
// CI (CI or PITR_REQUIRE_BACKENDS set).
func duckdb(t *testing.T, sql string) []map[string]any {
	t.Helper()
	modules, err := filepath.Abs("../.tools/node_modules")
	require.NoError(t, err)
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(modules, "@duckdb", "node-api"))
	}
	if err != nil {
		if os.Getenv("CI") != "" || os.Getenv("PITR_REQUIRE_BACKENDS") != "" {
			t.Fatalf("node and @duckdb/node-api are required: %v (run scripts/tools.sh)", err)
		}
		t.Skipf("node or @duckdb/node-api missing (run scripts/tools.sh): %v", err)
	}
	cmd := exec.Command(node, "testdata/duckdb.js", sql)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "duckdb: %s", stderr.String())
	var rows []map[string]any
	require.NoError(t, json.Unmarshal(out, &rows), "duckdb output %s", out)
	return rows
}

func sqlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// TestDuckDB checks that a standard tool reads data files: the schema, the
// row count, key bounds, sums, and key-range pruning by statistics.
func TestDuckDB(t *testing.T) {
	rows := randRows(rand.New(rand.NewSource(11)), 20000, 0)
	data, st := writeFile(t, rows, WriterOptions{RowGroupBytes: 64 << 10})
	path := filepath.Join(t.TempDir(), "f.parquet")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	src := "read_parquet(" + sqlString(path) + ")"

	var puts, deletes, olds, logical int64
	for _, r := range rows {
		if r.Op == OpPut {
			puts++
		} else {
			deletes++
		}
		if r.HasOldValue {
			olds++
		}
		logical += r.LogicalSize()
	}

	got := duckdb(t, `SELECT count(*)::VARCHAR AS n, hex(min(key)) AS min_key, hex(max(key)) AS max_key,
		min(commit_ts)::VARCHAR AS min_commit, max(commit_ts)::VARCHAR AS max_commit, min(start_ts)::VARCHAR AS min_start,
		count(*) FILTER (op = 1)::VARCHAR AS puts, count(*) FILTER (op = 2 AND value IS NULL)::VARCHAR AS deletes,
		count(old_value)::VARCHAR AS olds,
		sum(octet_length(key) + coalesce(octet_length(value), 0))::VARCHAR AS logical
		FROM `+src)
	require.Len(t, got, 1)
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	require.Equal(t, map[string]any{
		"n":          i(st.Rows),
		"min_key":    strings.ToUpper(hex.EncodeToString(st.MinKey)),
		"max_key":    strings.ToUpper(hex.EncodeToString(st.MaxKey)),
		"min_commit": u(st.MinCommitTS),
		"max_commit": u(st.MaxCommitTS),
		"min_start":  u(st.MinStartTS),
		"puts":       i(puts),
		"deletes":    i(deletes),
		"olds":       i(olds),
		"logical":    i(st.LogicalBytes),
	}, got[0])
	require.Equal(t, logical, st.LogicalBytes)

	schema := duckdb(t, `SELECT name, type, repetition_type AS rep FROM parquet_schema(`+sqlString(path)+`) WHERE name <> 'schema' ORDER BY name`)
	require.Equal(t, []map[string]any{
		{"name": "commit_ts", "type": "INT64", "rep": "REQUIRED"},
		{"name": "key", "type": "BYTE_ARRAY", "rep": "REQUIRED"},
		{"name": "old_value", "type": "BYTE_ARRAY", "rep": "OPTIONAL"},
		{"name": "op", "type": "INT32", "rep": "REQUIRED"},
		{"name": "start_ts", "type": "INT64", "rep": "REQUIRED"},
		{"name": "value", "type": "BYTE_ARRAY", "rep": "OPTIONAL"},
	}, schema)

	// Every row group has key statistics equal to its first and last key,
	// so engines can prune by key.
	stats := duckdb(t, `SELECT count(*)::VARCHAR AS groups, count(stats_min_value)::VARCHAR AS with_stats
		FROM parquet_metadata(`+sqlString(path)+`) WHERE path_in_schema = 'key'`)
	require.Len(t, stats, 1)
	require.NotEqual(t, "1", stats[0]["groups"], "several row groups")
	require.Equal(t, stats[0]["groups"], stats[0]["with_stats"])

	kv := duckdb(t, `SELECT decode(key) AS k, decode(value) AS v FROM parquet_kv_metadata(`+sqlString(path)+`) WHERE decode(key) IN ('pitr.format_version', 'pitr.sort_order') ORDER BY 1`)
	require.Equal(t, []map[string]any{
		{"k": "pitr.format_version", "v": "1"},
		{"k": "pitr.sort_order", "v": "key ASC, commit_ts DESC"},
	}, kv)
}
