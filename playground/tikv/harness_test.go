package tikv_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/pd"
	"github.com/pitr-io/pitr/playground/tikv"
	"github.com/pitr-io/pitr/playground/workload"
)

// harness is a cluster of PD plus three stores over one engine, in-process.
type harness struct {
	cluster *cluster.Cluster
	engine  *mvcc.Engine
	pd      *pd.Server
	stores  map[uint64]*tikv.Server
}

func testLogger(t *testing.T) hclog.Logger {
	level := hclog.Warn
	if os.Getenv("PITR_DEBUG") != "" {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: level, Output: os.Stderr})
}

func startHarness(t *testing.T) *harness {
	t.Helper()
	log := testLogger(t)
	cl, err := cluster.Open("", uint64(time.Now().UnixNano())>>1|1, 3)
	require.NoError(t, err)
	eng, err := mvcc.Open("", log.Named("mvcc"))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, eng.Close()) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := pd.Start(ctx, pd.Config{ClientAddr: "127.0.0.1:0", Cluster: cl, Logger: log.Named("pd")})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	h := &harness{cluster: cl, engine: eng, pd: p, stores: map[uint64]*tikv.Server{}}
	for _, st := range cl.Stores() {
		s, err := tikv.Start(tikv.Config{StoreID: st.ID, Addr: "127.0.0.1:0", Cluster: cl, Engine: eng, Logger: log.Named("tikv")})
		require.NoError(t, err)
		h.stores[st.ID] = s
		t.Cleanup(s.Stop)
	}
	return h
}

func (h *harness) client(t *testing.T) *txnkv.Client {
	t.Helper()
	c, err := workload.Connect(context.Background(), []string{h.pd.Addr()})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientGoSmoke(t *testing.T) {
	h := startHarness(t)
	c := h.client(t)
	ctx := context.Background()

	txn, err := c.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte("a"), []byte("1")))
	require.NoError(t, txn.Set([]byte("b"), make([]byte, 300)))
	require.NoError(t, txn.Set([]byte("c"), []byte("3")))
	require.NoError(t, txn.Commit(ctx))

	// Split and move a leader: the client follows.
	_, err = h.cluster.Split([]byte("b"))
	require.NoError(t, err)
	r := h.cluster.LocateRaw([]byte("c"))
	require.NoError(t, h.cluster.TransferLeader(r.ID, r.Peers[2].StoreId))

	ts, err := c.CurrentTimestamp("global")
	require.NoError(t, err)
	snap := c.GetSnapshot(ts)
	v, err := snap.Get(ctx, []byte("a"))
	require.NoError(t, err)
	require.Equal(t, "1", string(v))
	vals, err := snap.BatchGet(ctx, [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("zz")})
	require.NoError(t, err)
	require.Len(t, vals, 3)
	require.Len(t, vals["b"], 300)

	it, err := snap.Iter(nil, nil)
	require.NoError(t, err)
	var keys []string
	for it.Valid() {
		keys = append(keys, string(it.Key()))
		require.NoError(t, it.Next())
	}
	it.Close()
	require.Equal(t, []string{"a", "b", "c"}, keys)

	rit, err := snap.IterReverse([]byte("z"), nil)
	require.NoError(t, err)
	keys = nil
	for rit.Valid() {
		keys = append(keys, string(rit.Key()))
		require.NoError(t, rit.Next())
	}
	rit.Close()
	require.Equal(t, []string{"c", "b", "a"}, keys)

	// Async commit and 1PC.
	for _, mode := range []string{"async", "1pc"} {
		txn, err = c.Begin()
		require.NoError(t, err)
		if mode == "async" {
			txn.SetEnableAsyncCommit(true)
		} else {
			txn.SetEnable1PC(true)
		}
		require.NoError(t, txn.Set([]byte("a"), []byte(mode)))
		require.NoError(t, txn.Commit(ctx))
		txn, err = c.Begin()
		require.NoError(t, err)
		v, err = txn.Get(ctx, []byte("a"))
		require.NoError(t, err)
		require.Equal(t, mode, string(v))
		require.NoError(t, txn.Rollback())
	}

	// A conflicting txn fails with a write conflict.
	t1, err := c.Begin()
	require.NoError(t, err)
	t2, err := c.Begin()
	require.NoError(t, err)
	require.NoError(t, t1.Set([]byte("c"), []byte("t1")))
	require.NoError(t, t2.Set([]byte("c"), []byte("t2")))
	require.NoError(t, t2.Commit(ctx))
	require.Error(t, t1.Commit(ctx))
}

// TestStoreRestart kills the store that leads every region, lets the
// leaders move, restarts it on the same address and moves a leader back:
// the client keeps working throughout.
func TestStoreRestart(t *testing.T) {
	h := startHarness(t)
	c := h.client(t)
	ctx := context.Background()
	put := func(k, v string) {
		t.Helper()
		txn, err := c.Begin()
		require.NoError(t, err)
		require.NoError(t, txn.Set([]byte(k), []byte(v)))
		require.NoError(t, txn.Commit(ctx))
	}
	get := func(k string) string {
		t.Helper()
		txn, err := c.Begin()
		require.NoError(t, err)
		v, err := txn.Get(ctx, []byte(k))
		require.NoError(t, err)
		require.NoError(t, txn.Rollback())
		return string(v)
	}
	put("k", "1")
	r := h.cluster.LocateRaw([]byte("k"))
	id := r.Leader
	addr := h.stores[id].Addr()
	h.stores[id].Stop()
	require.NoError(t, h.cluster.SetStoreUp(id, false, 0))
	require.NotEqual(t, id, h.cluster.LocateRaw([]byte("k")).Leader)
	start := time.Now()
	put("k", "2")
	require.Equal(t, "2", get("k"))
	t.Logf("first txn after the store died took %s", time.Since(start))

	s, err := tikv.Start(tikv.Config{StoreID: id, Addr: addr, Cluster: h.cluster, Engine: h.engine, Logger: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(s.Stop)
	require.Equal(t, addr, s.Addr())
	h.stores[id] = s
	require.NoError(t, h.cluster.SetStoreUp(id, true, time.Now().Unix()))
	require.NoError(t, h.cluster.TransferLeader(r.ID, id))
	start = time.Now()
	put("k", "3")
	require.Equal(t, "3", get("k"))
	t.Logf("first txn after the restart took %s", time.Since(start))
}
