package coordinator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
)

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
