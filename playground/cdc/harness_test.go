package cdc_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/tikv"
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
// playground store server per store (tikvpb) with the CDC service
// registered on it. Every write is a raw tikvpb call to the region's
// leader, which gives the tests exact control over each command.
type harness struct {
	t     *testing.T
	cl    *cluster.Cluster
	eng   *mvcc.Engine
	tso   cdc.TSO
	addrs map[uint64]string
	svcs  map[uint64]*cdc.Service
	srvs  map[uint64]*tikv.Server
	kv    map[uint64]tikvpb.TikvClient
}

type harnessOpts struct {
	stores            int
	minTSInterval     time.Duration
	memoryQuota       int64
	pendingScansLimit int
	replicas          int    // peers per region (default: every store)
	version           string // TiKV version (default cdc.DefaultVersion)
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	if o.stores == 0 {
		o.stores = 3
	}
	if o.minTSInterval == 0 {
		o.minTSInterval = 50 * time.Millisecond
	}
	if o.replicas == 0 {
		o.replicas = o.stores
	}
	cl, err := cluster.OpenReplicas("", testClusterID, o.stores, o.replicas)
	require.NoError(t, err)
	eng, err := mvcc.Open("", hclog.NewNullLogger())
	require.NoError(t, err)
	h := &harness{t: t, cl: cl, eng: eng, tso: &clockTSO{}, addrs: map[uint64]string{},
		svcs: map[uint64]*cdc.Service{}, srvs: map[uint64]*tikv.Server{}, kv: map[uint64]tikvpb.TikvClient{}}
	t.Cleanup(func() {
		for id, svc := range h.svcs {
			svc.Close()
			h.srvs[id].Stop()
		}
		eng.Close()
	})
	for _, s := range cl.Stores() {
		svc := cdc.New(cdc.Config{
			StoreID: s.ID, ClusterID: testClusterID, Cluster: cl, Engine: eng, TSO: h.tso,
			MinTSInterval: o.minTSInterval, MemoryQuota: o.memoryQuota, PendingScansLimit: o.pendingScansLimit,
			Version: o.version,
		})
		srv, err := tikv.Start(tikv.Config{StoreID: s.ID, Cluster: cl, Engine: eng, Register: []func(*grpc.Server){svc.Register}})
		require.NoError(t, err)
		h.svcs[s.ID], h.srvs[s.ID], h.addrs[s.ID] = svc, srv, srv.Addr()
		h.kv[s.ID] = tikvpb.NewTikvClient(dialStore(t, srv.Addr(), false))
	}
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

// route returns the request context and the leader's client for the region
// holding key (every key of a request must share that region).
func (h *harness) route(key []byte) (*kvrpcpb.Context, tikvpb.TikvClient) {
	r := h.cl.LocateRaw(key)
	require.NotNil(h.t, r)
	ep := r.Epoch
	return &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: r.LeaderPeer()}, h.kv[r.Leader]
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
	onePC       bool
	async       bool
	txnSource   uint64
	primary     string   // default: the first mutation's key
	secondaries []string // async commit: the other keys of the txn
}

// prewrite prewrites muts (primary = the first) with KvPrewrite and
// returns the 1PC commit ts when committed in one phase.
func (h *harness) prewrite(startTS uint64, muts []mut, o pwOpts) uint64 {
	h.t.Helper()
	onePC, _, err := h.tryPrewrite(startTS, muts, o)
	require.NoError(h.t, err)
	return onePC
}

// tryPrewrite is prewrite for goroutines: it returns the 1PC commit ts,
// the async-commit min_commit_ts and any error.
func (h *harness) tryPrewrite(startTS uint64, muts []mut, o pwOpts) (uint64, uint64, error) {
	primary := []byte(muts[0].key)
	if o.primary != "" {
		primary = []byte(o.primary)
	}
	req := &kvrpcpb.PrewriteRequest{
		PrimaryLock: primary, StartVersion: startTS, LockTtl: 3000,
		TxnSize: uint64(len(muts)), TryOnePc: o.onePC, UseAsyncCommit: o.async,
		Secondaries: bkeys(o.secondaries),
	}
	for _, m := range muts {
		op := map[mvcc.MutationOp]kvrpcpb.Op{mvcc.OpPut: kvrpcpb.Op_Put, mvcc.OpDelete: kvrpcpb.Op_Del, mvcc.OpLock: kvrpcpb.Op_Lock}[m.op]
		req.Mutations = append(req.Mutations, &kvrpcpb.Mutation{Op: op, Key: []byte(m.key), Value: m.value})
	}
	var kv tikvpb.TikvClient
	req.Context, kv = h.route([]byte(muts[0].key))
	req.Context.TxnSource = o.txnSource
	resp, err := kv.KvPrewrite(context.Background(), req)
	switch {
	case err != nil:
		return 0, 0, err
	case resp.RegionError != nil:
		return 0, 0, fmt.Errorf("prewrite: %v", resp.RegionError)
	case len(resp.Errors) > 0:
		return 0, 0, fmt.Errorf("prewrite: %v", resp.Errors)
	}
	return resp.OnePcCommitTs, resp.MinCommitTs, nil
}

func (h *harness) commit(startTS, commitTS uint64, keys ...string) {
	h.t.Helper()
	require.NoError(h.t, h.tryCommit(startTS, commitTS, keys...))
}

func (h *harness) tryCommit(startTS, commitTS uint64, keys ...string) error {
	ctx, kv := h.route([]byte(keys[0]))
	resp, err := kv.KvCommit(context.Background(), &kvrpcpb.CommitRequest{Context: ctx, StartVersion: startTS, CommitVersion: commitTS, Keys: bkeys(keys)})
	switch {
	case err != nil:
		return err
	case resp.RegionError != nil:
		return fmt.Errorf("commit: %v", resp.RegionError)
	case resp.Error != nil:
		return fmt.Errorf("commit: %v", resp.Error)
	}
	return nil
}

func (h *harness) rollback(startTS uint64, keys ...string) {
	h.t.Helper()
	ctx, kv := h.route([]byte(keys[0]))
	resp, err := kv.KvBatchRollback(context.Background(), &kvrpcpb.BatchRollbackRequest{Context: ctx, StartVersion: startTS, Keys: bkeys(keys)})
	require.NoError(h.t, err)
	require.Nil(h.t, resp.RegionError)
	require.Nil(h.t, resp.Error)
}

func (h *harness) heartbeat(startTS uint64, primary string) {
	h.t.Helper()
	ctx, kv := h.route([]byte(primary))
	resp, err := kv.KvTxnHeartBeat(context.Background(), &kvrpcpb.TxnHeartBeatRequest{Context: ctx, PrimaryLock: []byte(primary), StartVersion: startTS, AdviseLockTtl: 60000})
	require.NoError(h.t, err)
	require.Nil(h.t, resp.RegionError)
	require.Nil(h.t, resp.Error)
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
