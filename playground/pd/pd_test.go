package pd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/txnkv"
	pdclient "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/constants"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
)

const testClusterID = 1

// startPD starts a Server on a fresh 3-store cluster; dir "" = temp dir.
func startPD(t *testing.T, c *cluster.Cluster, dir string) *Server {
	t.Helper()
	if c == nil {
		var err error
		c, err = cluster.Open("", testClusterID, 3)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{Dir: dir, Cluster: c, GCLifeTime: 10 * time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// newPDClient connects the real PD client; it is closed before the server.
func newPDClient(t *testing.T, s *Server) pdclient.Client {
	t.Helper()
	cli, err := pdclient.NewClient(caller.Component("pitr-playground-test"), []string{s.Addr()}, pdclient.SecurityOption{})
	require.NoError(t, err)
	t.Cleanup(cli.Close)
	warmUpTSO(t, cli)
	return cli
}

// warmUpTSO waits for the client's first timestamp. The pinned PD client
// races two TSO stream creations at start-up and cancels the loser
// (connectionctx.Manager.storeLocked), which can fail the very first GetTS
// with Canceled; real PD shows the same, so callers retry.
func warmUpTSO(t *testing.T, cli pdclient.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := cli.GetTS(context.Background())
		if err == nil {
			return
		}
		require.True(t, errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled, "unexpected first GetTS error: %v", err)
		require.True(t, time.Now().Before(deadline), "no timestamp after 10s: %v", err)
		time.Sleep(10 * time.Millisecond)
	}
}

// rawPD is a plain pdpb client, for what the PD client does not expose.
func rawPD(t *testing.T, s *Server) pdpb.PDClient {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return pdpb.NewPDClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTSOAllocator(t *testing.T) {
	type step struct {
		now       int64 // wall clock ms
		count     uint32
		wantPhys  int64
		wantLast  int64
		wantSaves int // saves so far, init included
	}
	tests := []struct {
		name  string
		saved int64 // persisted bound at init
		start int64 // wall clock at init
		steps []step
	}{
		{
			name: "fresh start follows the wall clock", saved: 0, start: 1000,
			steps: []step{
				{now: 1000, count: 1, wantPhys: 1000, wantLast: 1, wantSaves: 1},
				{now: 1000, count: 10, wantPhys: 1000, wantLast: 11, wantSaves: 1},
				{now: 1005, count: 2, wantPhys: 1005, wantLast: 2, wantSaves: 1},
			},
		},
		{
			name: "restart starts above the saved bound", saved: 5000, start: 1000,
			steps: []step{
				{now: 1000, count: 1, wantPhys: 5001, wantLast: 1, wantSaves: 1},
				{now: 6000, count: 1, wantPhys: 6000, wantLast: 1, wantSaves: 1},
			},
		},
		{
			name: "clock going backwards keeps the physical part", saved: 0, start: 2000,
			steps: []step{
				{now: 2000, count: 3, wantPhys: 2000, wantLast: 3, wantSaves: 1},
				{now: 1500, count: 1, wantPhys: 2000, wantLast: 4, wantSaves: 1},
			},
		},
		{
			name: "logical overflow borrows the next millisecond", saved: 0, start: 3000,
			steps: []step{
				{now: 3000, count: uint32(maxLogical - 2), wantPhys: 3000, wantLast: maxLogical - 2, wantSaves: 1},
				{now: 3000, count: 5, wantPhys: 3001, wantLast: 5, wantSaves: 1},
			},
		},
		{
			name: "window is saved before the bound is reached", saved: 0, start: 10_000,
			steps: []step{
				{now: 11_000, count: 1, wantPhys: 11_000, wantLast: 1, wantSaves: 1},
				{now: 12_000, count: 1, wantPhys: 12_000, wantLast: 1, wantSaves: 2},
				{now: 12_500, count: 1, wantPhys: 12_500, wantLast: 1, wantSaves: 2},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var saves []int64
			a := newTSOAllocator(func(_ context.Context, limit int64) error {
				saves = append(saves, limit)
				return nil
			})
			_, _, err := a.next(context.Background(), 1, tt.start)
			require.ErrorIs(t, err, errTSONotReady)
			require.NoError(t, a.init(context.Background(), tt.saved, tt.start))
			var prev uint64
			for i, st := range tt.steps {
				p, l, err := a.next(context.Background(), st.count, st.now)
				require.NoError(t, err, "step %d", i)
				require.Equal(t, st.wantPhys, p, "step %d physical", i)
				require.Equal(t, st.wantLast, l, "step %d logical", i)
				require.Len(t, saves, st.wantSaves, "step %d saves", i)
				require.Less(t, p, saves[len(saves)-1], "step %d: issued physical must be below the saved bound", i)
				first := ComposeTS(p, l-int64(st.count)+1)
				require.Greater(t, first, prev, "step %d: batch must start above the previous one", i)
				prev = ComposeTS(p, l)
			}
		})
	}
	t.Run("bad counts", func(t *testing.T) {
		a := newTSOAllocator(func(context.Context, int64) error { return nil })
		require.NoError(t, a.init(context.Background(), 0, 1))
		for _, n := range []uint32{0, uint32(maxLogical)} {
			_, _, err := a.next(context.Background(), n, 1)
			require.Error(t, err, "count %d", n)
		}
	})
}

func TestTSOMonotonic(t *testing.T) {
	s := startPD(t, nil, "")
	cli := newPDClient(t, s)
	ctx := ctxT(t)

	var last uint64
	for i := 0; i < 300; i++ {
		p, l, err := cli.GetTS(ctx)
		require.NoError(t, err)
		ts := ComposeTS(p, l)
		require.Greater(t, ts, last)
		last = ts
		if i%50 == 0 {
			in, err := s.TS(ctx)
			require.NoError(t, err)
			require.Greater(t, in, last)
			last = in
		}
	}
	// The physical part follows the wall clock.
	require.InDelta(t, time.Now().UnixMilli(), ExtractPhysical(last), 5000)

	const workers, per = 8, 200
	got := make([][]uint64, workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				var ts uint64
				if w%4 == 3 {
					v, err := s.TS(ctx)
					if err != nil {
						errs <- err
						return
					}
					ts = v
				} else {
					p, l, err := cli.GetTS(ctx)
					if err != nil {
						errs <- err
						return
					}
					ts = ComposeTS(p, l)
				}
				got[w] = append(got[w], ts)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	seen := map[uint64]bool{}
	for w := range got {
		require.Len(t, got[w], per)
		for i, ts := range got[w] {
			require.Greater(t, ts, last, "worker %d saw a ts from before the concurrent phase", w)
			if i > 0 {
				require.Greater(t, ts, got[w][i-1], "worker %d: not increasing", w)
			}
			require.False(t, seen[ts], "duplicate ts %d", ts)
			seen[ts] = true
		}
	}
}

func TestTSOAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	c, err := cluster.Open("", testClusterID, 3)
	require.NoError(t, err)
	ctx := ctxT(t)

	s1, err := Start(ctx, Config{Dir: dir, Cluster: c})
	require.NoError(t, err)
	cli, err := pdclient.NewClient(caller.Component("test"), []string{s1.Addr()}, pdclient.SecurityOption{})
	require.NoError(t, err)
	warmUpTSO(t, cli)
	p, l, err := cli.GetTS(ctx)
	require.NoError(t, err)
	before := ComposeTS(p, l)
	inproc, err := s1.TS(ctx)
	require.NoError(t, err)
	require.Greater(t, inproc, before)
	cli.Close()
	require.NoError(t, s1.Close())

	// Same address too, as a restarted PD keeps its URL.
	s2, err := Start(ctx, Config{Dir: dir, Cluster: c, ClientAddr: s1.Addr()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s2.Close()) })
	require.Equal(t, s1.Addr(), s2.Addr())
	after, err := s2.TS(ctx)
	require.NoError(t, err)
	require.Greater(t, after, inproc)
	// It starts above the window saved by the first run, not just above the
	// last issued timestamp.
	require.GreaterOrEqual(t, ExtractPhysical(after), ExtractPhysical(inproc)+tsoSaveWindow.Milliseconds()-tsoSaveMargin.Milliseconds())

	cli2 := newPDClient(t, s2)
	p, l, err = cli2.GetTS(ctx)
	require.NoError(t, err)
	require.Greater(t, ComposeTS(p, l), after)
}

func enc(s string) []byte { return cluster.EncodeKey([]byte(s)) }

func TestRegions(t *testing.T) {
	c, err := cluster.Open("", testClusterID, 3)
	require.NoError(t, err)
	for _, k := range []string{"m", "d", "t"} {
		_, err := c.Split([]byte(k))
		require.NoError(t, err)
	}
	// Regions: ["", d) [d, m) [m, t) [t, "").
	rs := c.Regions()
	require.Len(t, rs, 4)
	s := startPD(t, c, "")
	cli := newPDClient(t, s)
	ctx := ctxT(t)

	requireRegion := func(t *testing.T, want *cluster.Region, got *router.Region) {
		t.Helper()
		require.NotNil(t, got)
		require.Equal(t, want.ID, got.Meta.GetId())
		require.Equal(t, want.StartKey, got.Meta.GetStartKey())
		require.Equal(t, want.EndKey, got.Meta.GetEndKey())
		require.Equal(t, want.Epoch, *got.Meta.GetRegionEpoch())
		require.Len(t, got.Meta.GetPeers(), 3)
		require.Equal(t, want.LeaderPeer(), got.Leader)
	}

	t.Run("GetRegion", func(t *testing.T) {
		tests := []struct {
			key  []byte
			want int
		}{
			{key: nil, want: 0},
			{key: enc("a"), want: 0},
			{key: enc("d"), want: 1},
			{key: enc("l\xff"), want: 1},
			{key: enc("m"), want: 2},
			{key: enc("zzz"), want: 3},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%q", tt.key), func(t *testing.T) {
				got, err := cli.GetRegion(ctx, tt.key)
				require.NoError(t, err)
				requireRegion(t, rs[tt.want], got)
			})
		}
	})

	t.Run("GetPrevRegion", func(t *testing.T) {
		got, err := cli.GetPrevRegion(ctx, enc("e"))
		require.NoError(t, err)
		requireRegion(t, rs[0], got)
		got, err = cli.GetPrevRegion(ctx, enc("a"))
		require.NoError(t, err)
		require.Nil(t, got, "the first region has no previous region")
	})

	t.Run("GetRegionByID", func(t *testing.T) {
		for i := range rs {
			got, err := cli.GetRegionByID(ctx, rs[i].ID)
			require.NoError(t, err)
			requireRegion(t, rs[i], got)
		}
		got, err := cli.GetRegionByID(ctx, 99999)
		require.NoError(t, err)
		require.Nil(t, got)
	})

	t.Run("ScanRegions", func(t *testing.T) {
		tests := []struct {
			name       string
			start, end []byte
			limit      int
			want       []int
		}{
			{name: "all", start: nil, end: nil, limit: 0, want: []int{0, 1, 2, 3}},
			{name: "limit", start: nil, end: nil, limit: 2, want: []int{0, 1}},
			{name: "from inside a region", start: enc("e"), end: nil, limit: 10, want: []int{1, 2, 3}},
			{name: "end is exclusive", start: enc("e"), end: enc("t"), limit: 10, want: []int{1, 2}},
			{name: "end inside a region", start: enc("a"), end: enc("n"), limit: 10, want: []int{0, 1, 2}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := cli.ScanRegions(ctx, tt.start, tt.end, tt.limit) //nolint:staticcheck // deprecated but still used by clients
				require.NoError(t, err)
				require.Len(t, got, len(tt.want))
				for i, w := range tt.want {
					requireRegion(t, rs[w], got[i])
				}
			})
		}
		// Old clients read the deprecated parallel fields.
		resp, err := rawPD(t, s).ScanRegions(ctx, &pdpb.ScanRegionsRequest{Header: &pdpb.RequestHeader{ClusterId: testClusterID}, Limit: 10})
		require.NoError(t, err)
		require.Len(t, resp.GetRegionMetas(), 4)
		require.Len(t, resp.GetLeaders(), 4)
		require.Len(t, resp.GetRegions(), 4)
	})

	t.Run("BatchScanRegions", func(t *testing.T) {
		tests := []struct {
			name   string
			ranges []router.KeyRange
			limit  int
			want   []int
		}{
			{name: "two ranges", ranges: []router.KeyRange{{StartKey: enc("a"), EndKey: enc("b")}, {StartKey: enc("n"), EndKey: enc("o")}}, limit: 10, want: []int{0, 2}},
			{name: "shared region once", ranges: []router.KeyRange{{StartKey: enc("e"), EndKey: enc("f")}, {StartKey: enc("g"), EndKey: enc("h")}}, limit: 10, want: []int{1}},
			{name: "limit", ranges: []router.KeyRange{{StartKey: nil, EndKey: nil}}, limit: 3, want: []int{0, 1, 2}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := cli.BatchScanRegions(ctx, tt.ranges, tt.limit, opt.WithOutputMustContainAllKeyRange())
				require.NoError(t, err)
				require.Len(t, got, len(tt.want))
				for i, w := range tt.want {
					requireRegion(t, rs[w], got[i])
				}
			})
		}
		_, err := cli.BatchScanRegions(ctx, []router.KeyRange{{StartKey: enc("n"), EndKey: enc("o")}, {StartKey: enc("a"), EndKey: enc("b")}}, 10)
		require.Error(t, err, "unsorted ranges")
	})

	t.Run("codec client sees raw keys", func(t *testing.T) {
		codec := tikv.NewCodecPDClient(tikv.ModeTxn, cli)
		got, err := codec.GetRegion(ctx, []byte("e"))
		require.NoError(t, err)
		require.Equal(t, rs[1].ID, got.Meta.GetId())
		require.Equal(t, []byte("d"), got.Meta.GetStartKey())
		require.Equal(t, []byte("m"), got.Meta.GetEndKey())
	})

	t.Run("leader moves and down peers", func(t *testing.T) {
		r := rs[2]
		down := r.Leader
		require.NoError(t, c.SetStoreUp(down, false, 0))
		t.Cleanup(func() { require.NoError(t, c.SetStoreUp(down, true, time.Now().Unix())) })
		got, err := cli.GetRegionByID(ctx, r.ID)
		require.NoError(t, err)
		require.NotEqual(t, down, got.Leader.GetStoreId())
		require.Len(t, got.DownPeers, 1)
		require.Equal(t, down, got.DownPeers[0].GetStoreId())

		require.NoError(t, c.SetStoreUp(down, true, time.Now().Unix()))
		got, err = cli.GetRegionByID(ctx, r.ID)
		require.NoError(t, err)
		require.Empty(t, got.DownPeers)
	})

	t.Run("split after start", func(t *testing.T) {
		_, err := c.Split([]byte("p"))
		require.NoError(t, err)
		got, err := cli.GetRegion(ctx, enc("q"))
		require.NoError(t, err)
		require.Equal(t, enc("p"), got.Meta.GetStartKey())
		require.Equal(t, enc("t"), got.Meta.GetEndKey())
	})
}

func TestStores(t *testing.T) {
	c, err := cluster.Open("", testClusterID, 3)
	require.NoError(t, err)
	stores := c.Stores()
	require.NoError(t, c.SetStoreAddr(stores[0].ID, "127.0.0.1:20160"))
	s := startPD(t, c, "")
	cli := newPDClient(t, s)
	ctx := ctxT(t)

	all, err := cli.GetAllStores(ctx, opt.WithExcludeTombstone())
	require.NoError(t, err)
	require.Len(t, all, 3)
	sort.Slice(all, func(i, j int) bool { return all[i].GetId() < all[j].GetId() })
	for i, st := range all {
		require.Equal(t, stores[i].ID, st.GetId())
		require.Equal(t, metapb.StoreState_Up, st.GetState())
	}
	require.Equal(t, "127.0.0.1:20160", all[0].GetAddress())

	st, err := cli.GetStore(ctx, stores[1].ID)
	require.NoError(t, err)
	require.Equal(t, stores[1].ID, st.GetId())
	_, err = cli.GetStore(ctx, 424242)
	require.Error(t, err)

	// A down store stays listed, as PD keeps it until it is taken offline.
	require.NoError(t, c.SetStoreUp(stores[2].ID, false, 0))
	all, err = cli.GetAllStores(ctx)
	require.NoError(t, err)
	require.Len(t, all, 3)
}

func TestServiceSafePoints(t *testing.T) {
	s := startPD(t, nil, "")
	cli := newPDClient(t, s)
	ctx := ctxT(t)

	base := time.Now().UnixMilli()
	ts := func(secondsAfterBase int64) uint64 { return ComposeTS(base+secondsAfterBase*1000, 0) }
	// AdvanceGC(now) keeps the GC safepoint 10 min behind now.
	now := func(secondsAfterBase int64) uint64 { return ts(secondsAfterBase + 600) }

	type step struct {
		name string
		run  func(t *testing.T) uint64 // returns the value to check
		want uint64
		// wantLive is the expected set of live service safepoints after the step.
		wantLive map[string]uint64
		wantGC   uint64
	}
	steps := []step{
		{
			name: "first service: min is gc_worker at 0",
			run: func(t *testing.T) uint64 {
				min, err := cli.UpdateServiceGCSafePoint(ctx, "br", 60, ts(100))
				require.NoError(t, err)
				return min
			},
			want:     0,
			wantLive: map[string]uint64{"gc_worker": 0, "br": ts(100)},
			wantGC:   0,
		},
		{
			name:     "AdvanceGC is held by br",
			run:      func(t *testing.T) uint64 { return advance(t, s, now(200)) },
			want:     ts(100),
			wantLive: map[string]uint64{"gc_worker": ts(200), "br": ts(100)},
			wantGC:   ts(100),
		},
		{
			name: "a safepoint below the minimum is refused",
			run: func(t *testing.T) uint64 {
				min, err := cli.UpdateServiceGCSafePoint(ctx, "cdc", 60, ts(99))
				require.NoError(t, err)
				return min
			},
			want:     ts(100),
			wantLive: map[string]uint64{"gc_worker": ts(200), "br": ts(100)},
			wantGC:   ts(100),
		},
		{
			name: "another service above the minimum is stored",
			run: func(t *testing.T) uint64 {
				min, err := cli.UpdateServiceGCSafePoint(ctx, "cdc", 60, ts(150))
				require.NoError(t, err)
				return min
			},
			want:     ts(100),
			wantLive: map[string]uint64{"gc_worker": ts(200), "br": ts(100), "cdc": ts(150)},
			wantGC:   ts(100),
		},
		{
			name: "the minimum service moving up reports the next minimum",
			run: func(t *testing.T) uint64 {
				min, err := cli.UpdateServiceGCSafePoint(ctx, "br", 60, ts(180))
				require.NoError(t, err)
				return min
			},
			want:     ts(150),
			wantLive: map[string]uint64{"gc_worker": ts(200), "br": ts(180), "cdc": ts(150)},
			wantGC:   ts(100),
		},
		{
			name: "ttl 0 deletes",
			run: func(t *testing.T) uint64 {
				min, err := cli.UpdateServiceGCSafePoint(ctx, "cdc", 0, math.MaxUint64)
				require.NoError(t, err)
				return min
			},
			want:     ts(180),
			wantLive: map[string]uint64{"gc_worker": ts(200), "br": ts(180)},
			wantGC:   ts(100),
		},
		{
			name:     "AdvanceGC follows the held safepoint",
			run:      func(t *testing.T) uint64 { return advance(t, s, now(300)) },
			want:     ts(180),
			wantLive: map[string]uint64{"gc_worker": ts(300), "br": ts(180)},
			wantGC:   ts(180),
		},
		{
			name: "expired services are ignored",
			run: func(t *testing.T) uint64 {
				s.skew.Add(int64(2 * time.Minute))
				return advance(t, s, now(400))
			},
			want:     ts(400),
			wantLive: map[string]uint64{"gc_worker": ts(400)},
			wantGC:   ts(400),
		},
		{
			name:     "AdvanceGC never goes back",
			run:      func(t *testing.T) uint64 { return advance(t, s, now(350)) },
			want:     ts(400),
			wantLive: map[string]uint64{"gc_worker": ts(400)},
			wantGC:   ts(400),
		},
		{
			name: "a service below the GC safepoint is refused",
			run: func(t *testing.T) uint64 {
				min, err := cli.UpdateServiceGCSafePoint(ctx, "late", 60, ts(399))
				require.NoError(t, err)
				return min
			},
			want:     ts(400),
			wantLive: map[string]uint64{"gc_worker": ts(400)},
			wantGC:   ts(400),
		},
		{
			name: "held again, then released",
			run: func(t *testing.T) uint64 {
				_, err := cli.UpdateServiceGCSafePoint(ctx, "log-backup-coordinator", 86400, ts(450))
				require.NoError(t, err)
				require.Equal(t, ts(450), advance(t, s, now(500)))
				_, err = cli.UpdateServiceGCSafePoint(ctx, "log-backup-coordinator", 0, 0)
				require.NoError(t, err)
				return advance(t, s, now(500))
			},
			want:     ts(500),
			wantLive: map[string]uint64{"gc_worker": ts(500)},
			wantGC:   ts(500),
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			require.Equal(t, st.want, st.run(t))
			live, err := s.ServiceSafePoints(ctx)
			require.NoError(t, err)
			require.Equal(t, st.wantLive, live)
			gc, err := s.GCSafePoint(ctx)
			require.NoError(t, err)
			require.Equal(t, st.wantGC, gc)
		})
	}

	t.Run("UpdateGCSafePoint only moves forward", func(t *testing.T) {
		got, err := cli.UpdateGCSafePoint(ctx, 0)
		require.NoError(t, err)
		require.Equal(t, ts(500), got)
		got, err = cli.UpdateGCSafePoint(ctx, ts(510))
		require.NoError(t, err)
		require.Equal(t, ts(510), got)
		got, err = cli.UpdateGCSafePoint(ctx, ts(505))
		require.NoError(t, err)
		require.Equal(t, ts(510), got)
		resp, err := rawPD(t, s).GetGCSafePoint(ctx, &pdpb.GetGCSafePointRequest{Header: &pdpb.RequestHeader{ClusterId: testClusterID}})
		require.NoError(t, err)
		require.Equal(t, ts(510), resp.GetSafePoint())
	})

	t.Run("GC states API", func(t *testing.T) {
		gcs := cli.GetGCStatesClient(constants.NullKeyspaceID)
		_, err := gcs.SetGCBarrier(ctx, "barrier", ts(500), time.Hour)
		require.Error(t, err, "below the txn safepoint")
		b, err := gcs.SetGCBarrier(ctx, "barrier", ts(520), time.Hour)
		require.NoError(t, err)
		require.Equal(t, ts(520), b.BarrierTS)
		state, err := gcs.GetGCState(ctx)
		require.NoError(t, err)
		require.Equal(t, ts(510), state.TxnSafePoint)
		require.Equal(t, ts(510), state.GCSafePoint)
		require.Len(t, state.GCBarriers, 1)
		require.Equal(t, "barrier", state.GCBarriers[0].BarrierID)
		require.Equal(t, ts(520), advance(t, s, now(600)))
		del, err := gcs.DeleteGCBarrier(ctx, "barrier")
		require.NoError(t, err)
		require.Equal(t, "barrier", del.BarrierID)
		require.Equal(t, ts(600), advance(t, s, now(600)))
	})

	t.Run("persisted in PD's layout", func(t *testing.T) {
		before := s.wallNow().Unix()
		_, err := cli.UpdateServiceGCSafePoint(ctx, "br", 60, ts(700))
		require.NoError(t, err)
		after := s.wallNow().Unix()
		resp, err := s.Etcd().Get(ctx, "/pd/1/gc/safe_point")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		require.Equal(t, fmt.Sprintf("%x", ts(600)), string(resp.Kvs[0].Value))
		resp, err = s.Etcd().Get(ctx, "/pd/1/gc/safe_point/service/br")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		var got serviceSafePoint
		require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &got))
		require.Equal(t, "br", got.ServiceID)
		require.Equal(t, ts(700), got.SafePoint)
		require.GreaterOrEqual(t, got.ExpiredAt, before+60)
		require.LessOrEqual(t, got.ExpiredAt, after+60)
		require.Contains(t, string(resp.Kvs[0].Value), `"expired_at":`)
	})
}

func advance(t *testing.T, s *Server, now uint64) uint64 {
	t.Helper()
	sp, err := s.AdvanceGC(context.Background(), now)
	require.NoError(t, err)
	return sp
}

func TestGCTarget(t *testing.T) {
	tests := []struct {
		name                          string
		lifeTime, minService, current uint64
		want                          uint64
	}{
		{name: "life time bound", lifeTime: 100, minService: 200, current: 50, want: 100},
		{name: "held by a service", lifeTime: 300, minService: 200, current: 50, want: 200},
		{name: "never decreases", lifeTime: 30, minService: 200, current: 50, want: 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, gcTarget(tt.lifeTime, tt.minService, tt.current))
		})
	}
	require.Equal(t, uint64(0), lifeTimeTS(ComposeTS(1000, 5), time.Minute))
	require.Equal(t, ComposeTS(61_000-60_000, 0), lifeTimeTS(ComposeTS(61_000, 5), time.Minute))
}

func TestCheckCovers(t *testing.T) {
	r := func(id uint64, start, end string) *cluster.Region {
		return &cluster.Region{ID: id, StartKey: []byte(start), EndKey: []byte(end)}
	}
	tests := []struct {
		name       string
		regions    []*cluster.Region
		start, end string
		wantErr    bool
	}{
		{name: "tiles", regions: []*cluster.Region{r(1, "", "b"), r(2, "b", "")}, start: "a", end: "c"},
		{name: "tiles to +inf", regions: []*cluster.Region{r(1, "a", "b"), r(2, "b", "")}, start: "a", end: ""},
		{name: "none", regions: nil, start: "a", end: "c", wantErr: true},
		{name: "hole before", regions: []*cluster.Region{r(1, "b", "")}, start: "a", end: "c", wantErr: true},
		{name: "hole between", regions: []*cluster.Region{r(1, "", "b"), r(2, "c", "")}, start: "a", end: "d", wantErr: true},
		{name: "hole after", regions: []*cluster.Region{r(1, "", "b")}, start: "a", end: "c", wantErr: true},
		{name: "hole after, to +inf", regions: []*cluster.Region{r(1, "", "b")}, start: "a", end: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkCovers(tt.regions, []byte(tt.start), []byte(tt.end))
			if tt.wantErr {
				require.Error(t, err)
			} else {
				require.NoError(t, err)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	c, err := cluster.Open("", testClusterID, 1)
	require.NoError(t, err)
	tests := []struct {
		name string
		cfg  Config
		is   error
	}{
		{name: "no cluster", cfg: Config{}},
		{name: "bad address", cfg: Config{Cluster: c, ClientAddr: "nope"}},
		// Start retries a free port taken in the meantime on this error.
		{name: "client port taken", cfg: Config{Cluster: c, ClientAddr: l.Addr().String()}, is: syscall.EADDRINUSE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Start(ctxT(t), tt.cfg)
			require.Error(t, err)
			require.Nil(t, s)
			if tt.is != nil {
				require.ErrorIs(t, err, tt.is)
			}
		})
	}
}

func TestProtocolEdges(t *testing.T) {
	s := startPD(t, nil, "")
	raw := rawPD(t, s)
	ctx := ctxT(t)
	good := &pdpb.RequestHeader{ClusterId: testClusterID}

	t.Run("health check is SERVING", func(t *testing.T) {
		conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
		require.NoError(t, err)
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
	})

	t.Run("members", func(t *testing.T) {
		resp, err := raw.GetMembers(ctx, &pdpb.GetMembersRequest{})
		require.NoError(t, err)
		require.Equal(t, uint64(testClusterID), resp.GetHeader().GetClusterId())
		require.Len(t, resp.GetMembers(), 1)
		require.Equal(t, []string{"http://" + s.Addr()}, resp.GetLeader().GetClientUrls())
		require.Equal(t, resp.GetLeader().GetMemberId(), resp.GetEtcdLeader().GetMemberId())
		info, err := raw.GetClusterInfo(ctx, &pdpb.GetClusterInfoRequest{})
		require.NoError(t, err)
		require.Equal(t, []pdpb.ServiceMode{pdpb.ServiceMode_PD_SVC_MODE}, info.GetServiceModes())
	})

	t.Run("wrong cluster id", func(t *testing.T) {
		_, err := raw.GetRegion(ctx, &pdpb.GetRegionRequest{Header: &pdpb.RequestHeader{ClusterId: 7}})
		require.Equal(t, codes.FailedPrecondition, status.Code(err))
		stream, err := raw.Tso(ctx)
		require.NoError(t, err)
		require.NoError(t, stream.Send(&pdpb.TsoRequest{Header: &pdpb.RequestHeader{ClusterId: 7}, Count: 1}))
		_, err = stream.Recv()
		require.Equal(t, codes.FailedPrecondition, status.Code(err))
	})

	t.Run("tso batch returns the last timestamp", func(t *testing.T) {
		stream, err := raw.Tso(ctx)
		require.NoError(t, err)
		require.NoError(t, stream.Send(&pdpb.TsoRequest{Header: good, Count: 10}))
		resp, err := stream.Recv()
		require.NoError(t, err)
		require.Equal(t, uint32(10), resp.GetCount())
		require.GreaterOrEqual(t, resp.GetTimestamp().GetLogical(), int64(10))
		last := ComposeTS(resp.GetTimestamp().GetPhysical(), resp.GetTimestamp().GetLogical())
		next, err := s.TS(ctx)
		require.NoError(t, err)
		require.Greater(t, next, last)
		require.NoError(t, stream.CloseSend())
	})

	t.Run("alloc id", func(t *testing.T) {
		a, err := raw.AllocID(ctx, &pdpb.AllocIDRequest{Header: good})
		require.NoError(t, err)
		b, err := raw.AllocID(ctx, &pdpb.AllocIDRequest{Header: good, Count: 5})
		require.NoError(t, err)
		require.Equal(t, a.GetId()+5, b.GetId())
		boot, err := raw.IsBootstrapped(ctx, &pdpb.IsBootstrappedRequest{Header: good})
		require.NoError(t, err)
		require.True(t, boot.GetBootstrapped())
	})

	t.Run("etcd on the PD address", func(t *testing.T) {
		ec, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		require.NoError(t, err)
		defer ec.Close()
		_, err = ec.Put(ctx, "/tidb/br-stream/info/t1", "v")
		require.NoError(t, err)
		resp, err := s.Etcd().Get(ctx, "/tidb/br-stream/info/t1")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		require.Equal(t, "v", string(resp.Kvs[0].Value))
		members, err := ec.MemberList(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"http://" + s.Addr()}, members.Members[0].GetClientURLs())
	})

	t.Run("closed server", func(t *testing.T) {
		c, err := cluster.Open("", testClusterID, 1)
		require.NoError(t, err)
		s2, err := Start(ctx, Config{Cluster: c})
		require.NoError(t, err)
		require.NoError(t, s2.Close())
		require.NoError(t, s2.Close())
		_, err = s2.TS(ctx)
		require.ErrorIs(t, err, ErrClosed)
	})
}

func TestTxnKVClientConnects(t *testing.T) {
	s := startPD(t, nil, "")
	kv, err := txnkv.NewClient([]string{s.Addr()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, kv.Close()) })
	var ts uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		ts, err = kv.CurrentTimestamp("global")
		if err == nil {
			break
		}
		// The same PD-client start-up race as in warmUpTSO.
		require.True(t, errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled, "CurrentTimestamp: %v", err)
		require.True(t, time.Now().Before(deadline), "no timestamp after 10s: %v", err)
		time.Sleep(10 * time.Millisecond)
	}
	in, err := s.TS(ctxT(t))
	require.NoError(t, err)
	require.Greater(t, in, ts)
}
