package playground

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/pkg/caller"
)

// TestGCHonoursServiceSafepoint: while a service safepoint holds ts S, GC
// keeps the version a read at S needs; once it is released, GC collects it,
// as TiKV's GC does, so a backup that fails to hold GC loses data here too.
func TestGCHonoursServiceSafepoint(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1, GCLifeTime: time.Millisecond})
	require.NoError(t, err)
	defer p.Close()
	cli := newClient(t, ctx, p.PDAddr())
	defer cli.Close()

	put(t, ctx, cli, "gc/k", "old")
	s, err := p.PD.TS(ctx)
	require.NoError(t, err)
	put(t, ctx, cli, "gc/k", "new")

	pdc, err := pd.NewClient(caller.Component("playground-gc-test"), []string{p.PDAddr()}, pd.SecurityOption{})
	require.NoError(t, err)
	defer pdc.Close()
	_, err = pdc.UpdateServiceGCSafePoint(ctx, "pitr-test", 3600, s)
	require.NoError(t, err)

	readAtS := func() (string, bool) {
		snap := p.Engine.Snapshot()
		defer snap.Release()
		v, ok, err := snap.Get([]byte("gc/k"), s)
		require.NoError(t, err)
		return string(v), ok
	}

	sp, err := p.RunGC(ctx)
	require.NoError(t, err)
	require.LessOrEqual(t, sp, s, "GC safepoint stays at or below the held service safepoint")
	v, ok := readAtS()
	require.True(t, ok)
	require.Equal(t, "old", v, "the version needed at S survives GC")

	// Release the safepoint: the next GC passes S and collects the old version.
	_, err = pdc.UpdateServiceGCSafePoint(ctx, "pitr-test", 0, 0)
	require.NoError(t, err)
	put(t, ctx, cli, "gc/other", "x") // move time on
	sp, err = p.RunGC(ctx)
	require.NoError(t, err)
	require.Greater(t, sp, s)
	_, ok = readAtS()
	require.False(t, ok, "without the safepoint the old version is collected")
	require.Equal(t, "new", get(t, ctx, cli, "gc/k"), "the newest version is kept")
}
