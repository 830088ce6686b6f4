package pitr_test

import (
	"context"
	"math/rand"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
)

// TestTLSEndToEnd runs the whole pipeline once over TLS with client
// certificates required everywhere, as on a cluster with security
// configured (TiUP enable_tls, TiDB Operator tlsCluster): the agents reach
// PD, etcd and their store with TLS and serve the coordinators with it,
// the coordinators reach PD, etcd, client-go and the agents with it, and
// restore writes into a TLS target (PD, its HTTP API, the stores' import
// and status ports). Restores at four points must read exactly what the
// source reads there.
func TestTLSEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := startPipeline(t, ctx, "tls", playground.Config{Stores: 3, MinTSInterval: 200 * time.Millisecond, TLSDir: t.TempDir()})
	require.True(t, p.tls.Enabled())

	bank := &workload.Bank{Client: p.kv, Prefix: "tls/", Accounts: 100, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	var st workload.Stats
	wctx, stopWork := context.WithCancel(ctx)
	workErr := make(chan error, 1)
	go func() { workErr <- bank.Run(wctx, 4, &st) }()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	stores := p.src.StoreIDs()
	for i := 0; i < 12; i++ {
		time.Sleep(500 * time.Millisecond)
		if i%2 == 0 {
			_, _ = p.src.Cluster.Split(bank.Key(rng.Intn(bank.Accounts)))
		} else {
			rs := p.src.Cluster.Regions()
			_ = p.src.Cluster.TransferLeader(rs[rng.Intn(len(rs))].ID, stores[rng.Intn(len(stores))])
		}
	}
	stopWork()
	require.NoError(t, <-workErr)
	require.NotZero(t, st.Committed.Load())

	endTS, err := coordinator.GetTS(ctx, p.cl.PD)
	require.NoError(t, err)
	cp := waitCheckpoint(t, ctx, p.cl.Etcd, "tls", endTS, 90*time.Second, p.src)
	p.verify(cp)
	points := []uint64{p.startTS, cp}
	for len(points) < 4 {
		points = append(points, p.startTS+uint64(rng.Int63n(int64(cp-p.startTS))))
	}
	sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
	for i, T := range points {
		got, rows := p.restoreInto(i, T)
		requireSame(t, readAll(t, p.kv, T), got, T)
		t.Logf("T #%d = %d: %d keys equal over TLS (%d versions restored)", i, T, len(got), rows)
	}
}
