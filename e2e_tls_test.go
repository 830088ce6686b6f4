package pitr_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
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
	ctx, p, rng := startE2E(t, pipeline.Options{Task: "tls", Cluster: testkit.Options{
		Playground: playground.Config{Stores: 3, MinTSInterval: 200 * time.Millisecond, TLSDir: t.TempDir()}}})
	require.True(t, p.TLS.Enabled())

	bank := &workload.Bank{Client: p.KV, Prefix: "tls/", Accounts: 100, Initial: 1000}
	require.NoError(t, bank.Init(ctx))
	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 4, &st) })
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: 6 * time.Second,
		Routine: []testkit.Action{p.Split(1<<30, bankKey(bank)), p.MoveLeader()}, Watch: []*testkit.Workload{work}}
	require.NoError(t, chaos.Run(ctx))
	require.NoError(t, work.Stop())
	require.NotZero(t, st.Committed.Load())

	cp := p.WaitCheckpoint(p.TS(), 90*time.Second)
	p.Verify(cp)
	for i, T := range randomPoints(rng, p.StartTS, cp, 4) {
		r := p.RestoreInto(i, T, pipeline.RestoreOptions{})
		testkit.RequireSame(t, p.ReadAll(T), r.Read, T)
		t.Logf("T #%d = %d: %d keys equal over TLS (%d versions restored)", i, T, len(r.Read), r.Result.Rows)
	}
}
