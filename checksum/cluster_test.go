package checksum_test

import (
	"bytes"
	"context"
	"math/rand"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/testkit"
)

// scanSum is the local side: a client-go snapshot scan of Bounded(r) at ts.
func scanSum(t *testing.T, kv *txnkv.Client, r keyspace.Range, ts uint64) checksum.Sum {
	t.Helper()
	b := checksum.Bounded(r)
	it, err := kv.GetSnapshot(ts).Iter(b.Start, b.End)
	require.NoError(t, err)
	defer it.Close()
	var s checksum.Sum
	for it.Valid() {
		require.True(t, checksum.InBounds(r, it.Key()))
		s.Add(it.Key(), it.Value())
		require.NoError(t, it.Next())
	}
	return s
}

func put(t *testing.T, ctx context.Context, kv *txnkv.Client, kvs ...string) {
	t.Helper()
	txn, err := kv.Begin()
	require.NoError(t, err)
	for i := 0; i < len(kvs); i += 2 {
		require.NoError(t, txn.Set([]byte(kvs[i]), []byte(kvs[i+1])))
	}
	require.NoError(t, txn.Commit(ctx))
}

func TestBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    keyspace.Range
		key  []byte
		in   bool
	}{
		{"inside", keyspace.Range{Start: []byte("a"), End: []byte("b")}, []byte("a1"), true},
		{"at end", keyspace.Range{Start: []byte("a"), End: []byte("b")}, []byte("b"), false},
		{"no end", keyspace.Range{Start: []byte("a")}, []byte("zzz"), true},
		{"no end, all 0xff but short", keyspace.Range{}, bytes.Repeat([]byte{0xff}, 255), true},
		{"no end, at UnboundedEnd", keyspace.Range{}, checksum.UnboundedEnd, false},
		{"no end, after UnboundedEnd", keyspace.Range{}, append(bytes.Repeat([]byte{0xff}, 256), 0), false},
		{"explicit end past UnboundedEnd", keyspace.Range{End: bytes.Repeat([]byte{0xff}, 300)}, checksum.UnboundedEnd, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.in, checksum.InBounds(tc.r, tc.key))
		})
	}
	require.Equal(t, checksum.UnboundedEnd, checksum.Bounded(keyspace.Range{Start: []byte("a")}).End)
	require.Equal(t, []byte("b"), checksum.Bounded(keyspace.Range{End: []byte("b")}).End)
}

// TestClusterUnderChaos checksums a bank's accounts while transfers run and
// regions split and move leaders: at every ts, the cluster's checksum is
// the Sum of a snapshot scan at that ts.
func TestClusterUnderChaos(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	bank := &workload.Bank{Client: c.KV, Prefix: "bank/", Accounts: 200, Initial: 100}
	require.NoError(t, bank.Init(ctx))
	put(t, ctx, c.KV, "a/outside", "1", "zz/outside", "2")
	accounts := keyspace.Range{Start: []byte("bank/account/"), End: []byte("bank/account0")}

	var st workload.Stats
	w := c.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 4, &st) })
	chaosCtx, stopChaos := context.WithCancel(ctx)
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		rng := testkit.Rand(t)
		split := c.Split(16, func(rng *rand.Rand) []byte { return bank.Key(rng.Intn(bank.Accounts)) })
		move := c.MoveLeader()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-chaosCtx.Done():
				return
			case <-tick.C:
				if rng.Intn(2) == 0 {
					split(chaosCtx, rng)
				} else {
					move(chaosCtx, rng)
				}
			}
		}
	}()

	for i := 0; i < 20; i++ {
		ts := c.TS()
		got, err := checksum.Cluster(ctx, c.KV.KVStore, accounts, ts)
		require.NoError(t, err)
		require.Equal(t, uint64(bank.Accounts), got.TotalKvs)
		require.Equal(t, scanSum(t, c.KV, accounts, ts), got, "at %d", ts)
	}
	stopChaos()
	<-chaosDone
	require.NoError(t, w.Stop())
	require.Greater(t, len(c.P.Cluster.Regions()), 2, "the chaos split regions")
	require.Positive(t, st.Committed.Load())

	// The whole key space, over every region.
	ts := c.TS()
	got, err := checksum.Cluster(ctx, c.KV.KVStore, keyspace.Range{}, ts)
	require.NoError(t, err)
	require.Equal(t, scanSum(t, c.KV, keyspace.Range{}, ts), got)
	require.Equal(t, uint64(bank.Accounts+2), got.TotalKvs)
}

// TestClusterResolvesLeakedLock: a prewritten, never committed key below
// ts blocks the checksum until its TTL runs out; Cluster resolves it (the
// txn rolls back) and returns the committed data's checksum.
func TestClusterResolvesLeakedLock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	put(t, ctx, c.KV, "lock/a", "1", "lock/b", "2", "lock/c", "3")
	r := keyspace.Range{Start: []byte("lock/"), End: []byte("lock0")}
	_, err := workload.LeakLock(ctx, c.KV, []byte("lock/b"), 300*time.Millisecond)
	require.NoError(t, err)
	ts := c.TS()
	got, err := checksum.Cluster(ctx, c.KV.KVStore, r, ts)
	require.NoError(t, err)
	var want checksum.Sum
	for _, kv := range [][2]string{{"lock/a", "1"}, {"lock/b", "2"}, {"lock/c", "3"}} {
		want.Add([]byte(kv[0]), []byte(kv[1]))
	}
	require.Equal(t, want, got)
	require.Equal(t, want, scanSum(t, c.KV, r, ts))
}

// TestClusterSeveralRegions: a range over several regions is the Merge of
// its regions' checksums; keys at or after UnboundedEnd count in no
// checksum of an unbounded range.
func TestClusterSeveralRegions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	beyond := string(checksum.UnboundedEnd) + "x"
	put(t, ctx, c.KV, "r/1", "a", "r/2", "bb", "r/3", "ccc", "r/4", "dddd", "s/1", "e", beyond, "never")
	for _, k := range []string{"r/2", "r/3", "r/4", "s/"} {
		_, err := c.P.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	ts := c.TS()
	whole := keyspace.Range{Start: []byte("r/")}
	got, err := checksum.Cluster(ctx, c.KV.KVStore, whole, ts)
	require.NoError(t, err)
	require.Equal(t, uint64(5), got.TotalKvs)
	require.Equal(t, scanSum(t, c.KV, whole, ts), got)
	require.False(t, checksum.InBounds(whole, []byte(beyond)))

	var merged checksum.Sum
	for _, part := range []keyspace.Range{
		{Start: []byte("r/"), End: []byte("r/25")},
		{Start: []byte("r/25"), End: []byte("s/1")},
		{Start: []byte("s/1")},
	} {
		s, err := checksum.Cluster(ctx, c.KV.KVStore, part, ts)
		require.NoError(t, err)
		merged.Merge(s)
	}
	require.Equal(t, got, merged)

	// An empty range and one between keys.
	for _, r := range []keyspace.Range{
		{Start: []byte("r/5"), End: []byte("r/5")},
		{Start: []byte("r/4x"), End: []byte("s/")},
	} {
		s, err := checksum.Cluster(ctx, c.KV.KVStore, r, ts)
		require.NoError(t, err)
		require.Equal(t, checksum.Sum{}, s, "%v", r)
	}
}
