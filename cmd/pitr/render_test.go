package main

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestRenderViews is a golden test of `pitr task status` output (-update
// rewrites testdata/status.golden).
func TestRenderViews(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	start := keyspace.FromTime(now.Add(-time.Hour))
	cp := keyspace.FromTime(now.Add(-3 * time.Second))
	rec := &pitrpb.TaskRecord{
		Info: &pitrpb.TaskInfo{Name: "nightly", StartTs: start, Ranges: []*pitrpb.KeyRange{
			{StartKey: []byte("t"), EndKey: []byte("u")}, {StartKey: []byte{'m', 0xff}},
		}},
		StorageUrl: "s3://backups/nightly", State: pitrpb.TaskState_TASK_STATE_RUNNING,
	}
	st := &task.Status{
		Task: "nightly", State: "running", Checkpoint: cp, Covered: false, UncoveredRanges: 1, Regions: 3, StaleReports: 1,
		Slowest: []task.SlowStatus{
			{Cause: "uncovered", StartKey: hex.EncodeToString([]byte("t1")), EndKey: hex.EncodeToString([]byte("t2")), Reason: "no current region report covers this range"},
			{Cause: "long-txn", StartKey: hex.EncodeToString([]byte("t0")), EndKey: hex.EncodeToString([]byte("t1")), RegionID: 7, StoreID: 2, Checkpoint: cp, StartTS: cp + 1, Reason: "long transaction"},
		},
		Agents: []task.AgentStatus{{StoreID: 1, Addr: "10.0.0.1:9595", State: task.AgentUp, Regions: 2},
			{StoreID: 2, Addr: "10.0.0.2:9595", State: task.AgentDown, Error: "deadline exceeded"}},
		Locks: &task.LockStatus{Runs: 3, Errors: 1, Locks: 2, LastStartKey: hex.EncodeToString([]byte("t0")), LastEndKey: hex.EncodeToString([]byte("t1")),
			LastUnixMs: now.Add(-time.Second).UnixMilli(), LastMaxVersion: cp + 1, LastLocks: 1, LastLiveMs: 2500},
		SafePoint: cp, SafePointTTLSeconds: 86400, GCSafePoint: start - 100,
		RestorableFrom: start, Storage: &task.StorageUsage{Bytes: 3 << 30, Objects: 1234, MeasuredUnixMs: now.Add(-time.Minute).UnixMilli()},
		LastError: "agent of store 2: deadline exceeded", Leader: "coord-1", Term: 42, UpdatedUnixMs: now.Add(-500 * time.Millisecond).UnixMilli(),
	}
	stopped := &pitrpb.TaskRecord{
		Info:       &pitrpb.TaskInfo{Name: "old", StartTs: start},
		StorageUrl: "file:///backups/old", State: pitrpb.TaskState_TASK_STATE_STOPPED,
	}
	paused := &pitrpb.TaskRecord{
		Info:       &pitrpb.TaskInfo{Name: "weekly", StartTs: start},
		StorageUrl: "gs://b/weekly", State: pitrpb.TaskState_TASK_STATE_FAILED, Error: "paused for 25h0m0s, longer than the GC safepoint TTL 24h0m0s",
	}
	longPause := &pitrpb.TaskRecord{
		Info:       &pitrpb.TaskInfo{Name: "zz", StartTs: start},
		StorageUrl: "mem://zz", State: pitrpb.TaskState_TASK_STATE_PAUSED, UpdatedUnixMs: now.Add(-25 * time.Hour).UnixMilli(),
	}
	views := []task.TaskView{task.NewView(rec, cp, st, now), task.NewView(stopped, start, nil, now), task.NewView(paused, 0, nil, now),
		task.NewView(longPause, 0, nil, now)}
	var buf bytes.Buffer
	buf.WriteString("== table\n")
	require.NoError(t, renderViews(&buf, views, false))
	buf.WriteString("== detail\n")
	require.NoError(t, renderViews(&buf, views, true))
	golden := filepath.Join("testdata", "status.golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(golden, buf.Bytes(), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), buf.String())
}

func TestLockLine(t *testing.T) {
	st := &task.LockStatus{Runs: 1, Locks: 4, LastStartKey: "63", LastEndKey: "78", LastRanges: 2, LastUnixMs: 1}
	require.Contains(t, lockLine(st), "(2 lagging ranges)")
}
