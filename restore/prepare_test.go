package restore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/pd"
	"github.com/pitr-io/pitr/task"
)

// pdPost sends a JSON body to the target PD's HTTP API.
func pdPost(t *testing.T, addr, path, body string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/pd/api/v1/"+path, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode, "POST %s", path)
}

// lineCounter counts the log lines that contain match.
type lineCounter struct {
	match []byte
	n     atomic.Int64
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.n.Add(int64(bytes.Count(p, c.match)))
	return len(p), nil
}

// requirePDAsBefore checks that nothing the restore did to PD is left.
func requirePDAsBefore(t *testing.T, p *playground.Playground) {
	t.Helper()
	for _, n := range []string{pd.SchedulerBalanceLeader, pd.SchedulerBalanceRegion, pd.SchedulerBalanceHotRegion} {
		require.False(t, p.PD.SchedulerPaused(n), "%s resumed", n)
	}
	require.EqualValues(t, 8, p.PD.ScheduleConfig("merge-schedule-limit"))
	require.EqualValues(t, 20, p.PD.ScheduleConfig("max-merge-region-size"))
	require.EqualValues(t, 200000, p.PD.ScheduleConfig("max-merge-region-keys"))
}

func TestRestorePrepare(t *testing.T) {
	if testing.Short() {
		t.Skip("starts playgrounds")
	}
	ctx := context.Background()
	s := newSource(t, ctx)
	opts := func(pdAddr string) Options {
		return Options{Source: s.b.st, PDAddrs: []string{pdAddr}, RestoreTS: s.cp, Concurrency: 3, ChunkBytes: 16 << 10,
			ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	}
	plan, err := PlanRestore(ctx, s.b.st, s.cp, nil)
	require.NoError(t, err)
	boundaries := splitKeys(plan, DefaultMaxSplitKeys)
	require.Greater(t, len(boundaries), 5, "the source has regions to split at")

	t.Run("balancer paused during the writes", func(t *testing.T) {
		// PD merges small regions and balances leaders every 20 ms.
		tgt, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1, BalanceInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		t.Cleanup(func() { _ = tgt.Close() })
		pdPost(t, tgt.PDAddr(), "config", `{"schedule.split-merge-interval": "0s"}`)
		cli := newTxnClient(t, tgt.PDAddr())

		// Topology changes between the first and the last ingest count:
		// the schedulers resume when Run returns, which is after its last
		// ingest.
		var firstIngest, lastIngest atomic.Int64
		type change struct {
			at   int64
			what string
		}
		var mu sync.Mutex
		var changes []change
		unwatch := tgt.Cluster.Watch(func(ev cluster.Event) {
			now := time.Now().UnixNano()
			switch ev.Kind {
			case cluster.EventMerge:
				mu.Lock()
				changes = append(changes, change{now, fmt.Sprintf("merge under the writes: %d into %d", ev.Old[0].ID, ev.Old[1].ID)})
				mu.Unlock()
			case cluster.EventLeaderChange:
				mu.Lock()
				changes = append(changes, change{now, fmt.Sprintf("leader move under the writes: region %d %d -> %d", ev.Old[0].ID, ev.Old[0].Leader, ev.New[0].Leader)})
				mu.Unlock()
			}
		})
		defer unwatch()
		// TiKV splits regions as data arrives (its split checker is not a
		// PD scheduler, so nothing pauses it): split at random keys while
		// the restore runs, which gives the merge checker and
		// balance-leader work.
		cctx, stopSplits := context.WithCancel(ctx)
		var splitter sync.WaitGroup
		splitter.Add(1)
		go func() {
			defer splitter.Done()
			rng := rand.New(rand.NewSource(11))
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-cctx.Done():
					return
				case <-tick.C:
				}
				_, _ = tgt.Cluster.Split([]byte(fmt.Sprintf("kv/%04d", rng.Intn(400))))
				_, _ = tgt.Cluster.Split([]byte(fmt.Sprintf("bank/account/%08d", rng.Intn(200))))
			}
		}()
		o := opts(tgt.PDAddr())
		o.MaxAttempts = 100
		o.ChunkBytes = 2 << 10 // many chunks: the writes take a while
		retries := &lineCounter{match: []byte("write chunk failed")}
		o.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: retries})
		o.hooks = &hooks{ingested: func(*chunk, []kv) {
			now := time.Now().UnixNano()
			firstIngest.CompareAndSwap(0, now)
			lastIngest.Store(now)
		}}
		res, err := Run(ctx, o)
		stopSplits()
		splitter.Wait()
		require.NoError(t, err)
		mu.Lock()
		under := 0
		for _, c := range changes {
			if c.at >= firstIngest.Load() && c.at <= lastIngest.Load() {
				under++
				t.Log(c.what)
			}
		}
		mu.Unlock()
		t.Logf("%s; %d merges or leader moves between the first and the last ingest, %d chunk retries", res.Summary(), under, retries.n.Load())
		require.Zero(t, under, "PD merged regions or moved leaders under the writes")
		requireSame(t, s.hist.at(s.cp), scanAt(t, cli, s.cp), "restored under the balancer")
		requirePDAsBefore(t, tgt)
	})

	t.Run("pre-split at the source boundaries", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		require.Len(t, tgt.Cluster.Regions(), 1)
		res, err := Run(ctx, opts(tgt.PDAddr()))
		require.NoError(t, err)
		t.Logf("%s", res.Summary())
		starts := map[string]bool{}
		leaders := map[uint64]int{}
		for _, r := range tgt.Cluster.Regions() {
			starts[string(r.StartKey)] = true
			leaders[r.Leader]++
		}
		for _, k := range boundaries {
			require.True(t, starts[string(cluster.EncodeKey(k))], "the target is split at %q", k)
		}
		require.Len(t, leaders, 3, "regions scattered over the stores: %v", leaders)
		requireSame(t, s.hist.at(s.cp), scanAt(t, cli, s.cp), "restored into a pre-split target")
		requirePDAsBefore(t, tgt)
	})

	t.Run("target already split", func(t *testing.T) {
		splits := []string{"bank/", "kv/0123", "kv/0300", string(boundaries[len(boundaries)/2])}
		tgt, cli := startTarget(t, ctx, splits...)
		res, err := Run(ctx, opts(tgt.PDAddr()))
		require.NoError(t, err)
		t.Logf("%s", res.Summary())
		requireSame(t, s.hist.at(s.cp), scanAt(t, cli, s.cp), "restored into a split target")
	})

	t.Run("PD resumed after a failed restore", func(t *testing.T) {
		tgt, _ := startTarget(t, ctx)
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		o := opts(tgt.PDAddr())
		var paused atomic.Bool
		o.hooks = &hooks{ingested: func(*chunk, []kv) {
			paused.Store(tgt.PD.SchedulerPaused(pd.SchedulerBalanceLeader) && fmt.Sprint(tgt.PD.ScheduleConfig("merge-schedule-limit")) == "0")
			cancel()
		}}
		_, err := Run(rctx, o)
		require.ErrorIs(t, err, context.Canceled)
		require.True(t, paused.Load(), "PD was paused during the writes")
		requirePDAsBefore(t, tgt)
	})

	t.Run("refuse a target with a change stream", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		for _, tc := range []struct{ name, key string }{
			{"BR log backup", "/tidb/br-stream/info/backup1"},
			{"TiCDC changefeed", "/tidb/cdc/default/default/changefeed/info/feed1"},
			{"TiCDC changefeed before 6.2", "/tidb/cdc/changefeed/info/feed1"},
			{"pitr task", task.Key("t1")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := tgt.PD.Etcd().Put(ctx, tc.key, "x")
				require.NoError(t, err)
				defer func() { _, _ = tgt.PD.Etcd().Delete(ctx, tc.key) }()
				o := opts(tgt.PDAddr())
				o.Force = true // Force does not override it
				_, err = Run(ctx, o)
				require.ErrorIs(t, err, ErrTargetInUse)
				require.ErrorIs(t, err, ErrTargetNotEmpty)
				require.Contains(t, err.Error(), tc.key)
				require.NotContains(t, err.Error(), "\n")
				now, err := cli.CurrentTimestamp("global")
				require.NoError(t, err)
				require.Empty(t, scanAt(t, cli, now), "nothing was written")
				require.Len(t, tgt.Cluster.Regions(), 1, "nothing was split")
				requirePDAsBefore(t, tgt)
			})
		}
		// Other TiCDC keys (no changefeed) do not refuse.
		_, err := tgt.PD.Etcd().Put(ctx, "/tidb/cdc/default/__cdc_meta__/owner/1", "x")
		require.NoError(t, err)
		require.NoError(t, checkNotInUse(ctx, connector.Config{PDAddrs: []string{tgt.PDAddr()}}))
	})
}

// TestPauseKeepalive: the pause outlives its TTL while the keepalive runs,
// and resume undoes it; a pause left behind lapses by itself.
func TestPauseKeepalive(t *testing.T) {
	c, err := cluster.Open("", 7, 3)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := pd.Start(ctx, pd.Config{Cluster: c})
	require.NoError(t, err)
	defer srv.Close()

	ps := &pdSchedule{log: hclog.NewNullLogger(), addrs: pdHTTPAddrs(connector.TLS{}, []string{srv.Addr()}), ttl: 2 * time.Second, http: http.DefaultClient, candidates: pausedSchedulers, lower: loweredConfig}
	require.NoError(t, ps.pause(ctx))
	require.ElementsMatch(t, []string{pd.SchedulerBalanceLeader, pd.SchedulerBalanceRegion, pd.SchedulerBalanceHotRegion}, ps.schedulers)
	for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		require.True(t, srv.SchedulerPaused(pd.SchedulerBalanceLeader), "still paused past the TTL")
		require.EqualValues(t, 0, srv.ScheduleConfig("max-merge-region-size"))
	}
	require.False(t, srv.SchedulerPaused(pd.SchedulerEvictSlowStore), "evict-slow-store keeps running")
	ps.resume()
	require.False(t, srv.SchedulerPaused(pd.SchedulerBalanceLeader))
	require.EqualValues(t, 20, srv.ScheduleConfig("max-merge-region-size"))
	require.EqualValues(t, 8, srv.ScheduleConfig("merge-schedule-limit"))

	// A restore that dies leaves a pause that lapses within the TTL.
	left := &pdSchedule{log: hclog.NewNullLogger(), addrs: pdHTTPAddrs(connector.TLS{}, []string{srv.Addr()}), ttl: 2 * time.Second, http: http.DefaultClient, candidates: pausedSchedulers, lower: loweredConfig}
	require.NoError(t, left.pause(ctx))
	close(left.stop)
	left.wg.Wait()
	srv.Skew(3 * time.Second)
	require.False(t, srv.SchedulerPaused(pd.SchedulerBalanceLeader))
	require.EqualValues(t, 8, srv.ScheduleConfig("merge-schedule-limit"))
}

func TestSplitKeys(t *testing.T) {
	p := &Plan{Units: []keyspace.Range{
		{Start: nil, End: []byte("b")}, {Start: []byte("b"), End: []byte("d")}, {Start: []byte("d"), End: []byte("f")},
		{Start: []byte("m"), End: []byte("p")}, {Start: []byte("p"), End: nil},
	}}
	got := splitKeys(p, 100)
	require.Equal(t, [][]byte{[]byte("b"), []byte("d"), []byte("f"), []byte("m"), []byte("p")}, got)
	got = splitKeys(p, 2)
	require.Len(t, got, 2)
	require.True(t, bytes.Compare(got[0], got[1]) < 0)
}
