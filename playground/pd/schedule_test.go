package pd

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground/cluster"
)

// api sends one request to the PD HTTP API and decodes the JSON answer.
func api(t *testing.T, s *Server, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.Addr()+path, strings.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, json.Unmarshal(b, out), "body %s", b)
	}
	return resp.StatusCode
}

func TestHTTPSchedulers(t *testing.T) {
	s := startPD(t, nil, "")
	var names []string
	require.Equal(t, 200, api(t, s, "GET", "/pd/api/v1/schedulers", "", &names))
	require.Equal(t, []string{SchedulerBalanceHotRegion, SchedulerBalanceLeader, SchedulerBalanceRegion, SchedulerEvictSlowStore}, names)

	var msg string
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay": 60}`, &msg))
	require.Equal(t, "Pause or resume the scheduler successfully.", msg)
	require.True(t, s.SchedulerPaused(SchedulerBalanceLeader))
	require.False(t, s.SchedulerPaused(SchedulerBalanceRegion))
	require.Equal(t, 200, api(t, s, "GET", "/pd/api/v1/schedulers?status=paused", "", &names))
	require.Equal(t, []string{SchedulerBalanceLeader}, names)

	// The pause runs out by itself.
	s.Skew(61 * time.Second)
	require.False(t, s.SchedulerPaused(SchedulerBalanceLeader))

	// Delay 0 resumes at once.
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/schedulers/balance-region-scheduler", `{"delay": 600}`, &msg))
	require.True(t, s.SchedulerPaused(SchedulerBalanceRegion))
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/schedulers/balance-region-scheduler", `{"delay": 0}`, &msg))
	require.False(t, s.SchedulerPaused(SchedulerBalanceRegion))

	for _, tc := range []struct {
		name, path, body string
		code             int
		text             string
	}{
		{"unknown scheduler", "/pd/api/v1/schedulers/no-such-scheduler", `{"delay": 5}`, 500, "ErrSchedulerNotFound"},
		{"missing delay", "/pd/api/v1/schedulers/balance-leader-scheduler", `{}`, 400, "missing pause time"},
		{"bad body", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay": "x"}`, 400, "bad request body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m string
			require.Equal(t, tc.code, api(t, s, "POST", tc.path, tc.body, &m))
			require.Contains(t, m, tc.text)
		})
	}
}

func TestHTTPScheduleConfig(t *testing.T) {
	s := startPD(t, nil, "")
	var cfg map[string]any
	require.Equal(t, 200, api(t, s, "GET", "/pd/api/v1/config/schedule", "", &cfg))
	require.EqualValues(t, 8, cfg["merge-schedule-limit"])
	require.EqualValues(t, 20, cfg["max-merge-region-size"])

	var msg string
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/config?ttlSecond=30",
		`{"schedule.merge-schedule-limit": 0, "schedule.max-merge-region-size": 0}`, &msg))
	require.Equal(t, "The ttl config is updated.", msg)
	require.EqualValues(t, 0, s.ScheduleConfig("merge-schedule-limit"))
	// GET shows the stored values, not the temporary overrides.
	require.Equal(t, 200, api(t, s, "GET", "/pd/api/v1/config/schedule", "", &cfg))
	require.EqualValues(t, 8, cfg["merge-schedule-limit"])

	s.Skew(31 * time.Second)
	require.EqualValues(t, 8, s.ScheduleConfig("merge-schedule-limit"), "the override lapses")

	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/config?ttlSecond=30", `{"schedule.merge-schedule-limit": 0}`, &msg))
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/config?ttlSecond=0", `{"schedule.merge-schedule-limit": 8}`, &msg))
	require.Equal(t, "The ttl config is deleted.", msg)
	require.EqualValues(t, 8, s.ScheduleConfig("merge-schedule-limit"))

	require.Equal(t, 400, api(t, s, "POST", "/pd/api/v1/config?ttlSecond=30", `{"schedule.split-merge-interval": "0s"}`, &msg))
	require.Contains(t, msg, "unsupported ttl config")
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/config", `{"schedule.split-merge-interval": "0s"}`, &msg))
	require.Equal(t, "0s", s.ScheduleConfig("split-merge-interval"))
	require.Equal(t, 400, api(t, s, "POST", "/pd/api/v1/config/schedule", `{"no-such-key": 1}`, &msg))
}

func TestSplitAndScatterRegions(t *testing.T) {
	s := startPD(t, nil, "")
	cli := newPDClient(t, s)
	ctx := ctxT(t)

	keys := [][]byte{enc("b"), enc("d"), enc("f")}
	resp, err := cli.SplitRegions(ctx, keys)
	require.NoError(t, err)
	require.Nil(t, resp.GetHeader().GetError())
	require.EqualValues(t, 100, resp.GetFinishedPercentage())
	require.Len(t, resp.GetRegionsId(), 3)
	rs := s.cluster.Regions()
	require.Len(t, rs, 4)
	for i, k := range keys {
		require.Equal(t, k, rs[i+1].StartKey)
		require.Equal(t, rs[i+1].ID, resp.GetRegionsId()[i])
	}

	// A key that already starts a region is not processed (PD's splitter
	// skips it and counts it unfinished).
	resp, err = cli.SplitRegions(ctx, [][]byte{enc("b"), enc("c")})
	require.NoError(t, err)
	require.EqualValues(t, 50, resp.GetFinishedPercentage())
	require.Len(t, resp.GetRegionsId(), 1)

	var ids []uint64
	for _, r := range s.cluster.Regions() {
		ids = append(ids, r.ID)
		require.Equal(t, uint64(1), r.Leader)
	}
	sr, err := cli.ScatterRegions(ctx, ids)
	require.NoError(t, err)
	require.EqualValues(t, 100, sr.GetFinishedPercentage())
	leaders := map[uint64]int{}
	for _, r := range s.cluster.Regions() {
		leaders[r.Leader]++
	}
	require.Len(t, leaders, 3, "leaders spread over the stores: %v", leaders)

	sr, err = cli.ScatterRegions(ctx, append(ids[:1:1], 9999))
	require.NoError(t, err)
	require.EqualValues(t, 50, sr.GetFinishedPercentage())
	require.Equal(t, []uint64{9999}, sr.GetFailedRegionsId())
}

func TestBalancer(t *testing.T) {
	c, err := cluster.Open("", testClusterID, 3)
	require.NoError(t, err)
	for _, k := range []string{"b", "c", "d", "e", "f", "g"} {
		_, err := c.Split([]byte(k))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{Cluster: c, BalanceInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	// Leaders spread out: all 7 start on store 1.
	waitFor(t, func() bool {
		n := map[uint64]int{}
		for _, r := range c.Regions() {
			n[r.Leader]++
		}
		return n[1] <= 3 && len(n) == 3
	}, "balance-leader spreads leaders")

	// Nothing merges within split-merge-interval (1h) of the start.
	require.Len(t, c.Regions(), 7)

	// Paused schedulers and merge-schedule-limit 0 leave the regions alone.
	var msg string
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay": 60}`, &msg))
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/config?ttlSecond=60", `{"schedule.merge-schedule-limit": 0}`, &msg))
	require.Equal(t, 200, api(t, s, "POST", "/pd/api/v1/config", `{"schedule.split-merge-interval": "0s"}`, &msg))
	before := c.Regions()
	var changed atomic.Bool
	unwatch := c.Watch(func(cluster.Event) { changed.Store(true) })
	r0 := s.balancerRounds.Load()
	waitFor(t, func() bool { return s.balancerRounds.Load() >= r0+5 }, "five balancer rounds")
	unwatch()
	require.False(t, changed.Load(), "paused: no leader moves, no merges")
	require.Equal(t, len(before), len(c.Regions()))

	// When the pause and the override run out, merges and moves resume.
	s.Skew(61 * time.Second)
	waitFor(t, func() bool { return len(c.Regions()) == 1 }, "merge checker merges every region")
	r := c.Regions()[0]
	require.Empty(t, r.StartKey)
	require.Empty(t, r.EndKey)
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out: %s", what)
		time.Sleep(10 * time.Millisecond)
	}
}
