package workload_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
)

// TestMixed runs the mixed workload against a playground: a counted run,
// then a timed one, and checks that a snapshot read of the key space at a
// ts equals what the committed transactions left (puts, overwrites and
// deletes of small, medium and large values).
func TestMixed(t *testing.T) {
	if testing.Short() {
		t.Skip("playground test")
	}
	ctx := context.Background()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	cli, err := workload.Connect(ctx, []string{p.PDAddr()})
	require.NoError(t, err)
	defer cli.Close()

	var model workload.Model
	m := &workload.Mixed{
		Client: cli, Prefix: "mixed/", Keys: 40, KeysPerTxn: 4, Txns: 60,
		DeleteRatio: 0.25, MediumRatio: 0.3, LargeRatio: 0.1, LargeMax: 1<<20 + 200<<10,
		OnCommit: model.Record,
	}
	var st workload.MixedStats
	require.NoError(t, m.Run(ctx, 4, &st))
	require.Equal(t, int64(60), st.Committed.Load())
	t.Logf("puts %d (medium %d, large %d), deletes %d, conflicts %d", st.Puts.Load(), st.Medium.Load(), st.Large.Load(), st.Deletes.Load(), st.Conflicts.Load())
	require.Positive(t, st.Deletes.Load())
	require.Positive(t, st.Medium.Load())
	require.Positive(t, st.Large.Load())
	require.Greater(t, st.Puts.Load(), st.Medium.Load()+st.Large.Load(), "most values are small")

	compare := func() {
		t.Helper()
		ts, err := p.PD.TS(ctx)
		require.NoError(t, err)
		got, err := m.Read(ctx, ts)
		require.NoError(t, err)
		want := model.At(ts)
		require.Equal(t, len(want), len(got), "live keys")
		for k, v := range want {
			require.True(t, bytes.Equal(v, got[k]), "key %q: %d bytes read, %d committed", k, len(got[k]), len(v))
		}
	}
	compare()

	// A timed run (no count) on top of it.
	m.Txns = 0
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var st2 workload.MixedStats
	require.NoError(t, m.Run(tctx, 2, &st2))
	require.Positive(t, st2.Committed.Load())
	require.NoError(t, m.ResolveLocks(ctx)) // a cut-off transaction may have left locks
	compare()
}
