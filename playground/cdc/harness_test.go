package cdc_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

const testClusterID = 4242

// clockTSO is a PD-like TSO: physical milliseconds << 18, strictly
// increasing.
type clockTSO struct {
	mu   sync.Mutex
	last uint64
}

func (c *clockTSO) TS(context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := uint64(time.Now().UnixMilli()) << 18
	if ts <= c.last {
		ts = c.last + 1
	}
	c.last = ts
	return ts, nil
}

// harness is a small cluster: the region book, one engine, a TSO and one
// gRPC server per store with the CDC service registered. Writes go through
// the engine inside cluster.Apply, as a store's tikvpb handler does.
type harness struct {
	t     *testing.T
	cl    *cluster.Cluster
	eng   *mvcc.Engine
	tso   *clockTSO
	addrs map[uint64]string
	svcs  map[uint64]*cdc.Service
	srvs  map[uint64]*grpc.Server
}

type harnessOpts struct {
	stores        int
	minTSInterval time.Duration
	memoryQuota   int64
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	if o.stores == 0 {
		o.stores = 3
	}
	if o.minTSInterval == 0 {
		o.minTSInterval = 50 * time.Millisecond
	}
	cl, err := cluster.Open("", testClusterID, o.stores)
	require.NoError(t, err)
	eng, err := mvcc.Open("", hclog.NewNullLogger())
	require.NoError(t, err)
	h := &harness{t: t, cl: cl, eng: eng, tso: &clockTSO{}, addrs: map[uint64]string{}, svcs: map[uint64]*cdc.Service{}, srvs: map[uint64]*grpc.Server{}}
	for _, s := range cl.Stores() {
		svc := cdc.New(cdc.Config{
			StoreID: s.ID, ClusterID: testClusterID, Cluster: cl, Engine: eng, TSO: h.tso,
			MinTSInterval: o.minTSInterval, MemoryQuota: o.memoryQuota,
		})
		g := grpc.NewServer()
		svc.Register(g)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go g.Serve(ln)
		h.addrs[s.ID] = ln.Addr().String()
		h.svcs[s.ID] = svc
		h.srvs[s.ID] = g
		require.NoError(t, cl.SetStoreAddr(s.ID, ln.Addr().String()))
	}
	t.Cleanup(func() {
		for id, svc := range h.svcs {
			svc.Close()
			h.srvs[id].Stop()
		}
		eng.Close()
	})
	return h
}

func (h *harness) ts() uint64 {
	ts, err := h.tso.TS(context.Background())
	require.NoError(h.t, err)
	return ts
}

// region returns the region holding the raw key.
func (h *harness) region(key string) *cluster.Region {
	r := h.cl.LocateRaw([]byte(key))
	require.NotNil(h.t, r)
	return r
}

// leaderAddr returns the address of the store leading the region of key.
func (h *harness) leaderAddr(key string) string { return h.addrs[h.region(key).Leader] }

func (h *harness) follower(r *cluster.Region) uint64 {
	for _, p := range r.Peers {
		if p.StoreId != r.Leader {
			return p.StoreId
		}
	}
	h.t.Fatal("no follower")
	return 0
}

// apply runs fn as one command of the region holding keys (they must share
// a region), through the leader, as a tikvpb handler would.
func (h *harness) apply(keys [][]byte, fn func() error) {
	h.t.Helper()
	r := h.cl.LocateRaw(keys[0])
	require.NotNil(h.t, r)
	ep := r.Epoch
	ctx := &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: r.LeaderPeer()}
	rerr, err := h.cl.Apply(r.Leader, ctx, keys, func(*cluster.Region) error { return fn() })
	require.Nil(h.t, rerr)
	require.NoError(h.t, err)
}

type mut struct {
	op    mvcc.MutationOp
	key   string
	value []byte
}

func put(k string, v []byte) mut { return mut{mvcc.OpPut, k, v} }
func del(k string) mut           { return mut{mvcc.OpDelete, k, nil} }
func lockOnly(k string) mut      { return mut{mvcc.OpLock, k, nil} }

type pwOpts struct {
	onePC     bool
	async     bool
	txnSource uint64
}

// prewrite prewrites muts (primary = the first) and returns the 1PC commit
// ts when committed in one phase.
func (h *harness) prewrite(startTS uint64, muts []mut, o pwOpts) uint64 {
	h.t.Helper()
	var ms []mvcc.Mutation
	var keys [][]byte
	for _, m := range muts {
		ms = append(ms, mvcc.Mutation{Op: m.op, Key: []byte(m.key), Value: m.value})
		keys = append(keys, []byte(m.key))
	}
	var res mvcc.PrewriteResult
	h.apply(keys, func() error {
		var err error
		res, err = h.eng.Prewrite(mvcc.PrewriteArgs{
			Mutations: ms, Primary: keys[0], StartTS: startTS, LockTTL: 3000,
			TryOnePC: o.onePC, UseAsyncCommit: o.async, TxnSource: o.txnSource,
			Secondaries: keys[1:],
		})
		return err
	})
	require.Empty(h.t, res.Locked)
	return res.OnePCCommitTS
}

func (h *harness) commit(startTS, commitTS uint64, keys ...string) {
	h.t.Helper()
	h.apply(bkeys(keys), func() error { return h.eng.Commit(bkeys(keys), startTS, commitTS) })
}

func (h *harness) rollback(startTS uint64, keys ...string) {
	h.t.Helper()
	h.apply(bkeys(keys), func() error { return h.eng.BatchRollback(bkeys(keys), startTS) })
}

func (h *harness) heartbeat(startTS uint64, primary string) {
	h.t.Helper()
	h.apply(bkeys([]string{primary}), func() error {
		_, err := h.eng.TxnHeartBeat([]byte(primary), startTS, 60000)
		return err
	})
}

// txn prewrites and commits muts in 2PC and returns (start, commit).
func (h *harness) txn(muts ...mut) (uint64, uint64) {
	h.t.Helper()
	start := h.ts()
	h.prewrite(start, muts, pwOpts{})
	commit := h.ts()
	var keys []string
	for _, m := range muts {
		keys = append(keys, m.key)
	}
	h.commit(start, commit, keys...)
	return start, commit
}

func bkeys(ks []string) [][]byte {
	out := make([][]byte, len(ks))
	for i, k := range ks {
		out[i] = []byte(k)
	}
	return out
}

func (h *harness) feed(key string, o feedOpts) *feed {
	if o.version == "" {
		o.version = "8.5.0"
	}
	if o.clusterID == 0 {
		o.clusterID = testClusterID
	}
	return openFeed(h.t, h.leaderAddr(key), o)
}
