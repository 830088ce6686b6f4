package coordinator

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
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cp := keyspace.FromTime(now.Add(-time.Minute))
	const ttl = time.Hour
	for _, tc := range []struct {
		name    string
		state   pitrpb.TaskState
		gc      uint64
		gcKnown bool
		changed time.Time
		want    verdict
		fail    string
	}{
		{"running advances and holds", pitrpb.TaskState_TASK_STATE_RUNNING, cp, true, now, verdict{advance: true, hold: true}, ""},
		{"running, GC unknown", pitrpb.TaskState_TASK_STATE_RUNNING, cp + 1, false, now, verdict{advance: true, hold: true}, ""},
		{"running, GC passed", pitrpb.TaskState_TASK_STATE_RUNNING, cp + 1, true, now, verdict{}, "is above the checkpoint"},
		{"paused holds", pitrpb.TaskState_TASK_STATE_PAUSED, 0, true, now.Add(-ttl + time.Second), verdict{hold: true}, ""},
		{"paused past the TTL fails", pitrpb.TaskState_TASK_STATE_PAUSED, 0, true, now.Add(-ttl - time.Second), verdict{}, "paused for 1h0m1s"},
		{"paused, GC passed", pitrpb.TaskState_TASK_STATE_PAUSED, cp + 1, true, now, verdict{}, "is above the checkpoint"},
		{"failed holds", pitrpb.TaskState_TASK_STATE_FAILED, cp + 1, true, now, verdict{hold: true}, ""},
		{"stopped releases", pitrpb.TaskState_TASK_STATE_STOPPED, cp + 1, true, now, verdict{release: true}, ""},
		{"unknown state holds", pitrpb.TaskState(99), 0, true, now, verdict{hold: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decide(tc.state, cp, tc.gc, tc.gcKnown, tc.changed, now, ttl)
			if tc.fail != "" {
				require.Contains(t, got.fail, tc.fail)
				got.fail = ""
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{PDAddrs: []string{"x:1"}}
	c.SetDefaults()
	require.NoError(t, c.Validate())
	require.Equal(t, DefaultSafePointTTL, c.SafePointTTL)
	require.Equal(t, DefaultTickInterval, c.TickInterval)
	for _, mod := range []func(*Config){
		func(c *Config) { c.PDAddrs = nil },
		func(c *Config) { c.PDAddrs = []string{" "} },
		func(c *Config) { c.TickInterval = time.Millisecond },
		func(c *Config) { c.SafePointTTL = 500 * time.Millisecond },
		func(c *Config) { c.SessionTTL = 500 * time.Millisecond },
		func(c *Config) { c.HTTPAddr = "nope" },
		func(c *Config) { c.MaxSlow = -1 },
	} {
		c := Config{PDAddrs: []string{"x:1"}}
		mod(&c)
		c.SetDefaults()
		require.ErrorIs(t, c.Validate(), ErrConfig)
	}
}

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
	st := &Status{
		Task: "nightly", State: "running", Checkpoint: cp, Covered: false, UncoveredRanges: 1, Regions: 3, StaleReports: 1,
		Slowest: slowStatuses([]Slow{
			{Cause: CauseUncovered, Range: rg("t1", "t2"), Reason: "no current region report covers this range"},
			{Cause: CauseLongTxn, Range: rg("t0", "t1"), RegionID: 7, StoreID: 2, Checkpoint: cp, StartTS: cp + 1, Reason: "long transaction"},
		}),
		Agents: []AgentStatus{{StoreID: 1, Addr: "10.0.0.1:9595", State: AgentUp, Regions: 2},
			{StoreID: 2, Addr: "10.0.0.2:9595", State: AgentDown, Error: "deadline exceeded"}},
		Locks: &LockStatus{Runs: 3, Errors: 1, Locks: 2, LastStartKey: hex.EncodeToString([]byte("t0")), LastEndKey: hex.EncodeToString([]byte("t1")),
			LastUnixMs: now.Add(-time.Second).UnixMilli(), LastMaxVersion: cp + 1, LastLocks: 1, LastLiveMs: 2500},
		SafePoint: cp, SafePointTTLSeconds: 86400, GCSafePoint: start - 100,
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
	views := []TaskView{makeView(rec, cp, st, now), makeView(stopped, start, nil, now), makeView(paused, 0, nil, now),
		makeView(longPause, 0, nil, now)}
	var buf bytes.Buffer
	buf.WriteString("== table\n")
	require.NoError(t, RenderViews(&buf, views, false))
	buf.WriteString("== detail\n")
	require.NoError(t, RenderViews(&buf, views, true))
	golden := filepath.Join("testdata", "status.golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(golden, buf.Bytes(), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), buf.String())
}
